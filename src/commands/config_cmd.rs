//! `troupe config show`: every setting with its value, where it came from, and its doc line.

use super::{Context, exit, print, print_json};

pub fn show(ctx: &Context) -> anyhow::Result<u8> {
    if ctx.json {
        let entries: Vec<serde_json::Value> = ctx
            .config
            .entries()
            .into_iter()
            .map(|e| {
                let value: serde_json::Value = format!("v = {}", e.value)
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|t| t.get("v").cloned())
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or(serde_json::Value::Null);
                serde_json::json!({
                    "key": e.key,
                    "value": value,
                    "source": e.origin.to_string(),
                    "doc": e.doc,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "settings": entries }))?;
    } else {
        print(&ctx.config.render())?;
    }
    Ok(exit::OK)
}
