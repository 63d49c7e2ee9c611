//! The foundation commands, run as a user would: `doctor`, `config show`, `models`.

use crate::common::{Env, fixture_repo, stderr, stdout};

#[test]
fn doctor_on_a_machine_missing_the_model_names_the_fix_and_exits_1() {
    let env = Env::new();
    let repo = fixture_repo(&[("src/lib.rs", "pub fn f() {}\n")]);
    let out = env.troupe(repo.path(), &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("FAIL  model.chat (qwen2.5-coder-0.5b-instruct)"),
        "{text}"
    );
    assert!(
        text.contains("fix: troupe models pull qwen2.5-coder-0.5b-instruct"),
        "{text}"
    );
    assert!(
        text.contains("fix: troupe models pull all-minilm-l6-v2"),
        "{text}"
    );
    assert!(text.contains("ok    repository"), "{text}");

    let out = env.troupe(repo.path(), &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], false);
    let chat = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("model.chat"))
        .unwrap();
    assert_eq!(chat["ok"], false);
    assert_eq!(
        chat["fix"],
        "troupe models pull qwen2.5-coder-0.5b-instruct"
    );
}

#[test]
fn doctor_reports_a_broken_config_instead_of_dying() {
    let env = Env::new();
    let repo = fixture_repo(&[("troupe.toml", "[engine]\nthreads = \"many\"\n")]);
    let out = env.troupe(repo.path(), &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  config"), "{text}");
    assert!(
        text.contains("troupe.toml:2: bad value for `engine.threads`"),
        "{text}"
    );
}

#[test]
fn a_bad_config_value_is_an_error_naming_key_file_and_line() {
    let env = Env::new();
    let repo = fixture_repo(&[(
        "troupe.toml",
        "# settings\n[retrieve]\nlimit = 5\nmode = \"semantic\"\n",
    )]);
    let out = env.troupe(repo.path(), &["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let file = repo.path().join("troupe.toml");
    assert!(
        err.starts_with(&format!(
            "error: {}:4: bad value for `retrieve.mode`",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn an_unknown_key_in_the_user_config_is_an_error() {
    let env = Env::new();
    std::fs::create_dir_all(env.config_dir()).unwrap();
    std::fs::write(
        env.config_dir().join("config.toml"),
        "[model]\nchatt = \"x\"\n",
    )
    .unwrap();
    let repo = fixture_repo(&[]);
    let out = env.troupe(repo.path(), &["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml:2: unknown key `model.chatt` (did you mean `model.chat`?)"),
        "{err}"
    );
}

#[test]
fn config_show_prints_values_with_their_origin() {
    let env = Env::new();
    let repo = fixture_repo(&[("troupe.toml", "[engine]\nparallel = 3\n")]);
    let out = env.troupe(repo.path(), &["--model", "/tmp/m.gguf", "config", "show"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "# from: {}:2\nengine.parallel = 3\n",
            repo.path().join("troupe.toml").display()
        )),
        "{text}"
    );
    assert!(
        text.contains("# from: command line --model\nmodel.chat = \"/tmp/m.gguf\"\n"),
        "{text}"
    );
    assert!(
        text.contains("# from: default\nengine.threads = 0\n"),
        "{text}"
    );

    let out = env.troupe(repo.path(), &["config", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let parallel = v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "engine.parallel")
        .unwrap();
    assert_eq!(parallel["value"], 3);
}

#[test]
fn models_list_json_is_well_formed_for_every_entry() {
    let env = Env::new();
    let repo = fixture_repo(&[]);
    let out = env.troupe(repo.path(), &["models", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let models = v["models"].as_array().unwrap();
    assert!(models.len() >= 4);
    for m in models {
        assert_eq!(m["status"], "missing", "{m}");
        assert!(!m["sources"].as_array().unwrap().is_empty());
    }
}

#[test]
fn models_path_and_verify_of_a_missing_model_say_to_pull_it() {
    let env = Env::new();
    let repo = fixture_repo(&[]);
    for args in [
        &["models", "path", "smollm2-135m-instruct"][..],
        &["models", "verify", "smollm2-135m-instruct"][..],
    ] {
        let out = env.troupe(repo.path(), args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("run `troupe models pull smollm2-135m-instruct`"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_corrupt_model_file_fails_verification_with_a_clear_message() {
    let env = Env::new();
    let repo = fixture_repo(&[]);
    let models = env.cache().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // A truncated copy of the tiny model, with a stamp claiming it was verified.
    std::fs::write(
        models.join("smollm2-135m-instruct.gguf"),
        b"GGUF\x03\x00\x00\x00truncated",
    )
    .unwrap();
    std::fs::write(
        models.join("smollm2-135m-instruct.gguf.verified"),
        "sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 size=1 mtime_ns=1\n",
    )
    .unwrap();
    // The stamp does not match the file, so it never counts as present...
    let out = env.troupe(repo.path(), &["models", "path", "smollm2-135m-instruct"]);
    assert_eq!(out.status.code(), Some(2));
    // ...and verify re-hashes it and says what to do.
    let out = env.troupe(repo.path(), &["models", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("CORRUPT  smollm2-135m-instruct"), "{text}");
    assert!(text.contains("is corrupt or incomplete"), "{text}");
    assert!(
        text.contains("expected b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{text}"
    );
    assert!(
        text.contains("troupe models pull smollm2-135m-instruct"),
        "{text}"
    );
}

#[test]
fn outside_a_repository_repo_flag_errors_name_the_path() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let out = env.troupe(
        dir.path(),
        &["--repo", dir.path().to_str().unwrap(), "config", "show"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("is not inside a git repository"), "{err}");
}
