//! `troupe ask`, run as an editor or a user would, on the real tiny model: the answer streams,
//! cites the code it was given, and `--json` has its documented shape.

use crate::common::{Env, fixture_repo, model_lock, stderr, stdout, test_model};

fn repo() -> tempfile::TempDir {
    fixture_repo(&[
        (
            "src/money.py",
            "def add_cents(a, b):\n    \"\"\"Adds two amounts given in cents.\"\"\"\n    return a + b\n\n\ndef format_cents(c):\n    return f\"{c // 100}.{c % 100:02d}\"\n",
        ),
        ("README.md", "# shop\n\nA tiny shop.\n"),
    ])
}

#[test]
fn ask_json_has_the_documented_shape_and_cites_repository_code() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let out = env.troupe(
        repo.path(),
        &[
            "--model",
            model.to_str().unwrap(),
            "--json",
            "ask",
            "What does format_cents return?",
            "--file",
            "src/money.py",
            "--line",
            "6",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one object: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["answer", "citations", "stats"]);
    assert!(!v["answer"].as_str().unwrap().trim().is_empty());
    let citations = v["citations"].as_array().unwrap();
    // The file the question is about comes first, with the lines around --line.
    assert_eq!(citations[0]["path"], "src/money.py");
    assert_eq!(citations[0]["start_line"], 1);
    assert_eq!(citations[0]["end_line"], 7);
    for c in citations {
        assert!(c["path"].is_string() && c["start_line"].is_u64() && c["end_line"].is_u64());
    }
    assert!(v["stats"]["prompt_tokens"].as_u64().unwrap() > 20);
    assert!(v["stats"]["generated_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn ask_in_text_mode_streams_the_answer_then_the_sources() {
    let _guard = model_lock();
    let env = Env::new();
    let repo = repo();
    let model = test_model();
    let out = env.troupe(
        repo.path(),
        &[
            "--model",
            model.to_str().unwrap(),
            "ask",
            "How are cents added?",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let (answer, sources) = text
        .split_once("\n\nSources:\n")
        .expect("a Sources section");
    assert!(!answer.trim().is_empty(), "{text}");
    assert!(
        sources.contains("src/money.py:"),
        "the search found the code: {text}"
    );
}

#[test]
fn ask_refuses_bad_locations_with_the_fix() {
    let env = Env::new();
    let repo = repo();
    let out = env.troupe(repo.path(), &["ask", "why?", "--line", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--line and --range need --file"),
        "{}",
        stderr(&out)
    );
    let out = env.troupe(
        repo.path(),
        &["ask", "why?", "--file", "src/money.py", "--range", "5-9"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected START:END"),
        "{}",
        stderr(&out)
    );
    let out = env.troupe(repo.path(), &["ask", "   "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the question is empty"),
        "{}",
        stderr(&out)
    );
}
