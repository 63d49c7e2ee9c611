//! Where troupe keeps things on disk: the user cache (models, their sources), the user config
//! file, and the per-repository `.troupe/` directory.
//!
//! `TROUPE_CACHE_DIR` and `TROUPE_CONFIG_DIR` override the platform defaults, which tests and CI
//! use to keep state out of the home directory.

use std::path::{Path, PathBuf};

/// The user cache directory: `$TROUPE_CACHE_DIR`, else `~/.cache/troupe` (the platform's cache
/// directory elsewhere).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TROUPE_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        // Follow XDG on Linux and macOS alike: `~/.cache/troupe` is what the docs promise.
        let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
        return xdg
            .map_or_else(|| Path::new(&home).join(".cache"), PathBuf::from)
            .join("troupe");
    }
    directories::ProjectDirs::from("", "", "troupe")
        .map(|d| d.cache_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("troupe-cache"))
}

/// The directory holding the user's `config.toml`: `$TROUPE_CONFIG_DIR`, else
/// `~/.config/troupe`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TROUPE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty());
        return xdg
            .map_or_else(|| Path::new(&home).join(".config"), PathBuf::from)
            .join("troupe");
    }
    directories::ProjectDirs::from("", "", "troupe")
        .map(|d| d.config_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("troupe-config"))
}

/// The user's config file, which may not exist.
pub fn user_config_file() -> PathBuf {
    config_dir().join("config.toml")
}

/// Where verified model files live.
pub fn models_dir() -> PathBuf {
    cache_dir().join("models")
}

/// The per-repository state directory, `<repo>/.troupe`.
pub fn state_dir(repo: &Path) -> PathBuf {
    repo.join(".troupe")
}
