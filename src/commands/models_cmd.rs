//! `troupe models list | pull NAME | verify [NAME] | path NAME`.

use crate::models::pull::{self, PullOptions, Pulled};
use crate::models::{CATALOG, ModelEntry, Status, Store, catalog};

use super::{Context, exit, human_bytes, print, print_json};

fn lookup(name: &str) -> anyhow::Result<&'static ModelEntry> {
    catalog::find(name).ok_or_else(|| {
        crate::models::Error::Unknown {
            name: name.to_string(),
            known: catalog::ids(),
        }
        .into()
    })
}

/// Lists the catalog with each model's state in the cache.
pub fn list(ctx: &Context, store: &Store) -> anyhow::Result<u8> {
    if ctx.json {
        let models: Vec<serde_json::Value> = CATALOG
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "role": m.role,
                    "description": m.description,
                    "size": m.size,
                    "license": m.license,
                    "sha256": m.sha256,
                    "sources": m.sources,
                    "status": status_word(store.status(m)),
                    "path": store.path(m),
                    "default_for": default_for(m),
                })
            })
            .collect();
        print_json(&serde_json::json!({ "models": models }))?;
        return Ok(exit::OK);
    }
    let mut text = format!(
        "{:<28} {:<10} {:>9}  {:<12} {:<18} {:<18} {}\n",
        "ID", "ROLE", "SIZE", "LICENSE", "STATUS", "DEFAULT FOR", "SHA256"
    );
    for m in CATALOG {
        text.push_str(&format!(
            "{:<28} {:<10} {:>9}  {:<12} {:<18} {:<18} {}\n",
            m.id,
            m.role.to_string(),
            human_bytes(m.size),
            m.license,
            store.status(m).to_string(),
            default_for(m).unwrap_or("-"),
            m.sha256.get(..16).unwrap_or(m.sha256),
        ));
    }
    text.push_str(&format!("\nmodel cache: {}\n", store.dir().display()));
    print(&text)?;
    Ok(exit::OK)
}

/// Pulls each named model (or the configured chat and embedding models with `--defaults`).
pub fn pull(
    ctx: &Context,
    store: &Store,
    names: &[String],
    opts: &PullOptions,
) -> anyhow::Result<u8> {
    let names: Vec<String> = if names.is_empty() {
        vec![
            ctx.config.config.model.chat.clone(),
            ctx.config.config.model.embed.clone(),
        ]
    } else {
        names.to_vec()
    };
    if opts.from.is_some() && names.len() != 1 {
        anyhow::bail!("--from takes exactly one model name");
    }
    for name in &names {
        let entry = lookup(name)?;
        let pulled = pull::pull(store, entry, opts)?;
        let (word, path) = match &pulled {
            Pulled::AlreadyPresent(p) => ("already present", p),
            Pulled::Fetched(p) => ("fetched and verified", p),
        };
        if ctx.json {
            print_json(&serde_json::json!({
                "id": entry.id,
                "status": word,
                "path": path,
                "sha256": entry.sha256,
            }))?;
        } else {
            eprintln!("{}: {word}", entry.id);
            print(&format!("{}\n", path.display()))?;
        }
    }
    Ok(exit::OK)
}

/// Re-hashes one model, or every model in the cache. Exit 1 when one is corrupt.
pub fn verify(ctx: &Context, store: &Store, name: Option<&str>) -> anyhow::Result<u8> {
    let entries: Vec<&ModelEntry> = match name {
        Some(n) => vec![lookup(n)?],
        None => CATALOG
            .iter()
            .filter(|m| store.status(m) != Status::Missing)
            .collect(),
    };
    if let (Some(n), Some(e)) = (name, entries.first())
        && store.status(e) == Status::Missing
    {
        return Err(crate::models::Error::NotPresent { id: n.to_string() }.into());
    }
    let mut bad = 0;
    for entry in &entries {
        let result = store.verify(entry);
        if ctx.json {
            print_json(&serde_json::json!({
                "id": entry.id,
                "ok": result.is_ok(),
                "error": result.as_ref().err().map(|e| e.to_string()),
            }))?;
        } else {
            match &result {
                Ok(()) => print(&format!("ok       {}\n", entry.id))?,
                Err(e) => print(&format!("CORRUPT  {}: {e}\n", entry.id))?,
            }
        }
        bad += usize::from(result.is_err());
    }
    if entries.is_empty() && !ctx.json {
        eprintln!(
            "no models in {}; `troupe models pull` fetches the defaults",
            store.dir().display()
        );
    }
    Ok(if bad > 0 { exit::NEGATIVE } else { exit::OK })
}

/// Prints the path of a present, verified model.
pub fn path(ctx: &Context, store: &Store, name: &str) -> anyhow::Result<u8> {
    let entry = lookup(name)?;
    let resolved = store.resolve(entry.id, entry.role)?;
    if ctx.json {
        print_json(&serde_json::json!({ "id": entry.id, "path": resolved.path }))?;
    } else {
        print(&format!("{}\n", resolved.path.display()))?;
    }
    Ok(exit::OK)
}

fn default_for(m: &ModelEntry) -> Option<&'static str> {
    match m.id {
        catalog::DEFAULT_CHAT => Some("chat"),
        catalog::DEFAULT_EMBED => Some("embedding"),
        catalog::TEST_CHAT => Some("tests"),
        _ => None,
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Present => "present",
        Status::Missing => "missing",
        Status::Unverified => "unverified",
    }
}
