//! `troupe index`, `troupe search` and `troupe eval retrieval`, run as a user would, on fixture
//! repositories; vectors with the real all-MiniLM-L6-v2 model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Env, fixture_repo, stderr, stdout};

pub(crate) const FILES: &[(&str, &str)] = &[
    (
        "src/auth/session.rs",
        "/// Refreshes an expired session token with the identity provider.\npub fn refresh_session_token(user: &User) -> Token {\n    provider().renew(user.token())\n}\n",
    ),
    (
        "src/storage/cache.rs",
        "pub struct LruCache { capacity: usize }\n\nimpl LruCache {\n    /// Drops the least recently used entry when the cache is full.\n    pub fn evict_oldest(&mut self) {}\n}\n",
    ),
    (
        "server/routes.py",
        "def register_routes(app):\n    \"\"\"Attach the HTTP handlers for the REST API.\"\"\"\n    app.add_route('/users', list_users)\n",
    ),
    (
        "cmd/migrate/main.go",
        "package main\n\n// runMigrations applies pending database schema migrations.\nfunc runMigrations(db *sql.DB) error {\n\treturn nil\n}\n",
    ),
    (
        "docs/deploy.md",
        "# Deploying\n\n## Kubernetes\n\nApply the manifests in deploy/k8s with kubectl.\n",
    ),
];

const GOLDEN: &[(&str, &str)] = &[
    ("refresh expired session token", "src/auth/session.rs"),
    ("LruCache evict", "src/storage/cache.rs"),
    ("register REST API routes", "server/routes.py"),
    ("database schema migrations", "cmd/migrate/main.go"),
    ("deploy to kubernetes", "docs/deploy.md"),
];

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn search(env: &Env, repo: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["search", "--json"];
    all.extend_from_slice(args);
    let out = env.troupe(repo, &all);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    json_lines(&out)
}

#[test]
fn index_then_search_prints_the_json_contract_and_a_summary() {
    let env = Env::new();
    let repo = fixture_repo(FILES);
    std::fs::write(repo.path().join("logo.png"), b"\x89PNG\0\0\0").unwrap();
    let out = env.troupe(repo.path(), &["index", "--no-vectors"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("indexed 5 files"), "{text}");
    assert!(text.contains("skipped 1: binary 1"), "{text}");
    assert!(text.contains("vectors: off"), "{text}");

    for (query, want) in GOLDEN {
        let results = search(
            &env,
            repo.path(),
            &["--mode", "bm25", "--limit", "5", query],
        );
        let paths: Vec<&str> = results
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(want), "`{query}`: {want} not in {paths:?}");
    }
    let results = search(&env, repo.path(), &["--mode", "bm25", "LruCache"]);
    let mut keys: Vec<&String> = results[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "end_line",
            "language",
            "path",
            "score",
            "snippet",
            "start_line",
            "symbol"
        ]
    );
    assert_eq!(results[0]["path"], "src/storage/cache.rs");
    assert_eq!(results[0]["language"], "rust");
    assert_eq!(results[0]["start_line"], 1);
    assert!(results[0]["snippet"].as_str().unwrap().contains("LruCache"));

    // The query from stdin, readable text, and exit 1 when nothing matches.
    let out = env.troupe(repo.path(), &["search", "--mode", "bm25", "zzzunknownword"]);
    assert_eq!(out.status.code(), Some(1));
    let out = env.troupe(repo.path(), &["index", "--status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));
    std::fs::write(repo.path().join("new.py"), "def brand_new(): pass\n").unwrap();
    let out = env.troupe(repo.path(), &["index", "--status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "stale is a negative outcome");
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["added"][0], "new.py");
    assert_eq!(v["stale"], true);
}

#[test]
fn search_without_an_index_says_to_build_one() {
    let env = Env::new();
    let repo = fixture_repo(FILES);
    let out = env.troupe(repo.path(), &["search", "--mode", "bm25", "token"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("troupe index"), "{}", stderr(&out));
}

#[test]
fn a_killed_indexer_leaves_an_index_that_answers_and_the_next_run_repairs() {
    let env = Env::new();
    let files: Vec<(String, String)> = (0..150)
        .map(|i| {
            (
                format!("src/mod_{i}.rs"),
                format!(
                    "/// Item {i}.\npub fn handler_number_{i}(x: u64) -> u64 {{\n    x + {i}\n}}\n"
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = fixture_repo(&refs);
    let out = env.troupe(repo.path(), &["index", "--no-vectors"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    for (round, delay_ms) in [20u64, 80, 200].into_iter().enumerate() {
        // Change every file, start an update and kill it part-way.
        for (path, content) in &files {
            std::fs::write(
                repo.path().join(path),
                format!("{content}// edit round {round}\npub fn edited_{round}() {{}}\n"),
            )
            .unwrap();
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args(["index", "--no-vectors"])
            .current_dir(repo.path())
            .env("TROUPE_CACHE_DIR", env.cache())
            .env("TROUPE_CONFIG_DIR", env.config_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();

        // The index opens and answers from its last commit.
        let results = search(&env, repo.path(), &["--mode", "bm25", "handler number 7"]);
        assert!(!results.is_empty(), "round {round}: no answer after a kill");
    }
    let out = env.troupe(repo.path(), &["index", "--no-vectors", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["files"], 150);
    let out = env.troupe(repo.path(), &["index", "--status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let results = search(
        &env,
        repo.path(),
        &["--mode", "bm25", "--files", "edited_2"],
    );
    assert_eq!(results.len(), 10, "every file has the last edit");
}

/// The all-MiniLM-L6-v2 GGUF the test set-up pulls (`scripts/test.sh`).
pub(crate) fn minilm() -> PathBuf {
    let entry = troupe::models::catalog::find("all-minilm-l6-v2").expect("catalog entry");
    let path = troupe::paths::models_dir().join(entry.file_name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh (it pulls all-minilm-l6-v2) or `troupe models pull all-minilm-l6-v2`",
        path.display()
    );
    path
}

#[test]
fn hybrid_search_with_minilm_finds_the_golden_files() {
    let model = minilm();
    let model = model.to_str().unwrap();
    let env = Env::new();
    let repo = fixture_repo(FILES);
    let out = env.troupe(repo.path(), &["index", "--json", "--embed-model", model]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The converted GGUF's tokenizer metadata satisfies llama.cpp: it loads without warnings.
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["vectors"]["status"], "ok", "{v}");
    assert_eq!(v["vectors"]["rows"], v["chunks"]);

    for (query, want) in GOLDEN {
        let results = search(
            &env,
            repo.path(),
            &["--embed-model", model, "--files", "--limit", "5", query],
        );
        let paths: Vec<&str> = results
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(want),
            "hybrid `{query}`: {want} not in {paths:?}"
        );
    }
    // Natural language with no shared words: only the vectors can find it.
    let results = search(
        &env,
        repo.path(),
        &[
            "--embed-model",
            model,
            "--mode",
            "vector",
            "--files",
            "--limit",
            "2",
            "log in again when my credentials time out",
        ],
    );
    let paths: Vec<&str> = results
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"src/auth/session.rs"), "{paths:?}");

    // A second run embeds nothing new; an edit embeds only its file.
    let out = env.troupe(repo.path(), &["index", "--json", "--embed-model", model]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["vectors"]["embedded"], 0);
    std::fs::write(
        repo.path().join("server/routes.py"),
        "def health():\n    return 'ok'\n",
    )
    .unwrap();
    let out = env.troupe(repo.path(), &["index", "--json", "--embed-model", model]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["vectors"]["embedded"], 1);

    // eval retrieval over a cases file.
    let cases = repo.path().join("cases.jsonl");
    let lines: Vec<String> = GOLDEN
        .iter()
        .map(|(q, g)| serde_json::json!({"query": q, "gold": [g]}).to_string())
        .filter(|l| !l.contains("routes.py"))
        .collect();
    std::fs::write(&cases, lines.join("\n")).unwrap();
    let out = env.troupe(
        repo.path(),
        &[
            "eval",
            "retrieval",
            "--cases",
            cases.to_str().unwrap(),
            "--modes",
            "bm25,vector,hybrid",
            "--json",
            "--embed-model",
            model,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["cases"], 4);
        assert!(row["latency_ms"]["p95"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows[2]["mode"], "hybrid");
    assert_eq!(rows[2]["recall"]["5"], 1.0, "{}", rows[2]);
}

#[test]
fn index_status_names_the_vector_table_without_loading_a_catalog_model() {
    let env = Env::new();
    let repo = fixture_repo(FILES);
    let out = env.troupe(repo.path(), &["index", "--no-vectors"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A file named like the catalog's MiniLM but not a model: loading it would fail.
    let dir = tempfile::tempdir().unwrap();
    let entry = troupe::models::catalog::find("all-minilm-l6-v2").unwrap();
    let fake = dir.path().join(entry.file_name);
    std::fs::write(&fake, b"GGUF but not a model").unwrap();
    let out = env.troupe(
        repo.path(),
        &[
            "index",
            "--status",
            "--json",
            "--embed-model",
            fake.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(v["vectors"]["missing"], 5, "{v}");
    assert_eq!(
        v["vectors"]["model"],
        format!("{}:20", entry.file_name),
        "{v}"
    );
    assert_eq!(out.status.code(), Some(1), "vectors are missing: stale");
}

// EmbeddingGemma is 1.1 GB to fetch: this runs only when `troupe models pull embeddinggemma-300m`
// has put it in the cache, and says so when it skips.
#[test]
fn embeddinggemma_selected_in_the_config_gets_its_own_table_and_embeds_queries_alike() {
    let entry = troupe::models::catalog::find("embeddinggemma-300m").expect("catalog entry");
    let gemma = troupe::paths::models_dir().join(entry.file_name);
    if !gemma.is_file() {
        eprintln!(
            "skipped: {} is missing (run `troupe models pull embeddinggemma-300m`)",
            gemma.display()
        );
        return;
    }
    let minilm = minilm();
    let env = Env::new();
    let repo = fixture_repo(FILES);
    // The isolated cache sees the real model and its verification stamp through links.
    let models = env.cache().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for name in [
        entry.file_name.to_string(),
        format!("{}.verified", entry.file_name),
    ] {
        std::os::unix::fs::symlink(troupe::paths::models_dir().join(&name), models.join(name))
            .unwrap();
    }
    let config = repo.path().join("gemma.toml");
    std::fs::write(&config, "[model]\nembed = \"embeddinggemma-300m\"\n").unwrap();
    let config = config.to_str().unwrap();
    let minilm = minilm.to_str().unwrap();

    let out = env.troupe(repo.path(), &["index", "--json", "--embed-model", minilm]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.troupe(repo.path(), &["--config", config, "index", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["vectors"]["status"], "ok", "{v}");
    // Its own table: every chunk embedded again, none taken from MiniLM's.
    assert_eq!(v["vectors"]["embedded"], v["chunks"], "{v}");
    assert!(
        v["vectors"]["model"]
            .as_str()
            .unwrap()
            .starts_with(entry.file_name),
        "{v}"
    );
    let tables = std::fs::read_dir(repo.path().join(".troupe/index/vectors"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("chunks_")
        })
        .count();
    assert_eq!(tables, 2, "one vector table per model");

    let out = env.troupe(
        repo.path(),
        &["--config", config, "index", "--status", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["vectors"]["missing"], 0, "{v}");

    // Queries go through the same model with its query prompt: descriptions with no shared
    // words find their code.
    for (query, want) in [
        (
            "log in again when my credentials time out",
            "src/auth/session.rs",
        ),
        (
            "bring the database tables up to date",
            "cmd/migrate/main.go",
        ),
    ] {
        let results = search(
            &env,
            repo.path(),
            &[
                "--config", config, "--mode", "vector", "--files", "--limit", "1", query,
            ],
        );
        assert_eq!(results[0]["path"], want, "`{query}`: {results:?}");
    }
}
