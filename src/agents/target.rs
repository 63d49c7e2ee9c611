//! The code an editor command points at: a text file of the repository, taken from the disk or
//! from the editor's unsaved buffer, and optionally a range of its lines. Everything is checked
//! here, before a model is loaded, so a bad location fails at once with the fix.
//!
//! Also the one place the editor's edits reach the disk ([`write_if_unchanged`]): only when the
//! file still holds the text the edit was made from.

use std::path::{Path, PathBuf};

use super::edit::validate_path;

/// A file an editor command works on, with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Relative to the repository root, as given.
    pub path: String,
    /// The full path on disk.
    pub full_path: PathBuf,
    /// The file's text (from the disk, or the buffer given instead).
    pub text: String,
}

/// A location that cannot be used: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LocationError {
    /// What is wrong, naming the file.
    pub message: String,
    /// What the user can do about it.
    pub fix: String,
}

impl LocationError {
    fn new(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// The message followed by the fix, for one-line reports.
    pub fn with_fix(&self) -> String {
        format!("{}; {}", self.message, self.fix)
    }
}

/// Files larger than this are refused (their text would not fit a prompt anyway).
pub const MAX_FILE_BYTES: usize = 1 << 20;

impl Target {
    /// Loads `file` (relative to `root`): `content` when given (an unsaved buffer), else the
    /// file on disk. Refuses paths outside the repository, missing files, folders, binary files
    /// and huge files.
    pub fn load(root: &Path, file: &str, content: Option<String>) -> Result<Target, LocationError> {
        let full_path = validate_path(root, file).map_err(|e| {
            LocationError::new(
                e.to_string(),
                "pass a path relative to the repository root, inside it",
            )
        })?;
        let text = match content {
            Some(text) => text,
            None => {
                if full_path.is_dir() {
                    return Err(LocationError::new(
                        format!("{file} is a folder, not a file"),
                        "pass a file with --file",
                    ));
                }
                let bytes = std::fs::read(&full_path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        LocationError::new(
                            format!("{file} does not exist in {}", root.display()),
                            "check the path; it is relative to the repository root",
                        )
                    } else {
                        LocationError::new(
                            format!("cannot read {}: {e}", full_path.display()),
                            "check the file's permissions",
                        )
                    }
                })?;
                if bytes.len() > MAX_FILE_BYTES {
                    return Err(LocationError::new(
                        format!(
                            "{file} is {} bytes, over the limit of {MAX_FILE_BYTES}",
                            bytes.len()
                        ),
                        "pass a smaller file",
                    ));
                }
                if bytes.contains(&0) {
                    return Err(binary(file));
                }
                String::from_utf8(bytes).map_err(|_| binary(file))?
            }
        };
        if text.contains('\0') {
            return Err(binary(file));
        }
        Ok(Target {
            path: file.to_string(),
            full_path,
            text,
        })
    }

    /// Lines in the file (a last line without a newline counts; an empty file has none).
    pub fn line_count(&self) -> u32 {
        self.text.split_inclusive('\n').count() as u32
    }

    /// Checks a 1-based inclusive range against the file; `None` is the whole file. Returns the
    /// range to use.
    pub fn check_range(&self, range: Option<(u32, u32)>) -> Result<(u32, u32), LocationError> {
        let total = self.line_count();
        let file = &self.path;
        match range {
            None if total == 0 => Ok((1, 0)),
            None => Ok((1, total)),
            Some((a, b)) if a == 0 || a > b => Err(LocationError::new(
                format!("bad line range {a}:{b} for {file}"),
                "lines are 1-based and the start comes first, e.g. --range 10:42",
            )),
            Some((a, b)) if b > total => Err(LocationError::new(
                format!("line range {a}:{b} is past the end of {file}, which has {total} lines"),
                format!("pass a range within 1:{total}"),
            )),
            Some(r) => Ok(r),
        }
    }
}

/// Writes `new_text` to `target`'s file only if the file still holds `base` (the text the edit
/// was made from); otherwise nothing is written. The new text replaces the file atomically
/// (a temporary file in the same folder, renamed over it).
pub fn write_if_unchanged(
    root: &Path,
    file: &str,
    base: &str,
    new_text: &str,
) -> Result<(), LocationError> {
    let current = Target::load(root, file, None)?;
    if current.text != base {
        return Err(LocationError::new(
            format!("{file} changed since the edit was made from it; nothing was written"),
            "run the edit again on the file's current content",
        ));
    }
    let full = &current.full_path;
    let dir = full.parent().unwrap_or(root);
    let failed = |e: std::io::Error| {
        LocationError::new(
            format!("cannot write {}: {e}", full.display()),
            "check the folder's permissions and free space",
        )
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    std::io::Write::write_all(&mut tmp, new_text.as_bytes()).map_err(failed)?;
    if let Ok(meta) = std::fs::metadata(full) {
        // Keep the file's mode (an executable script stays executable).
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(full).map_err(|e| failed(e.error))?;
    Ok(())
}

fn binary(file: &str) -> LocationError {
    LocationError::new(
        format!("{file} is not a UTF-8 text file"),
        "troupe explains and edits text files only",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_checked_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "l1\nl2\nl3").unwrap();
        std::fs::write(dir.path().join("b.bin"), [0x7f, 0x45, 0x00, 0x01]).unwrap();
        let t = Target::load(dir.path(), "a.py", None).unwrap();
        assert_eq!(t.line_count(), 3);
        assert_eq!(t.check_range(None).unwrap(), (1, 3));
        assert_eq!(t.check_range(Some((2, 3))).unwrap(), (2, 3));
        let e = t.check_range(Some((2, 4))).unwrap_err();
        assert!(
            e.message.contains("past the end") && e.fix.contains("1:3"),
            "{e:?}"
        );
        let e = t.check_range(Some((3, 2))).unwrap_err();
        assert!(e.fix.contains("1-based"), "{e:?}");
        let e = Target::load(dir.path(), "missing.py", None).unwrap_err();
        assert!(e.message.contains("does not exist"), "{e:?}");
        let e = Target::load(dir.path(), "b.bin", None).unwrap_err();
        assert!(e.message.contains("not a UTF-8 text file"), "{e:?}");
        assert!(Target::load(dir.path(), "../x", None).is_err());
        // An unsaved buffer stands in for the disk.
        let t = Target::load(dir.path(), "a.py", Some("only\n".into())).unwrap();
        assert_eq!(t.line_count(), 1);
    }

    #[test]
    fn writing_refuses_a_file_that_changed_and_writes_one_that_did_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.py");
        std::fs::write(&path, "old\n").unwrap();
        let e = write_if_unchanged(dir.path(), "a.py", "older\n", "new\n").unwrap_err();
        assert!(e.message.contains("changed since"), "{e:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        write_if_unchanged(dir.path(), "a.py", "old\n", "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    }
}
