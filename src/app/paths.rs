//! Checks of the files a command will write, made before any work starts, so
//! that a long run never ends in "cannot write the output".

use std::path::{Path, PathBuf};

/// Why an output file cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputPathError {
    /// The directory the file goes in does not exist.
    #[error("{}: the directory {} does not exist", path.display(), dir.display())]
    NoDirectory {
        /// The output file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// What should be the file's directory is not a directory.
    #[error("{}: {} is not a directory", path.display(), dir.display())]
    NotADirectory {
        /// The output file.
        path: PathBuf,
        /// Its would-be directory.
        dir: PathBuf,
    },
    /// The output names a directory, not a file.
    #[error("{}: is a directory; give a file name", path.display())]
    IsADirectory {
        /// The output path.
        path: PathBuf,
    },
    /// The directory (or an existing file) cannot be written.
    #[error("{}: cannot write there: {source}", path.display())]
    NotWritable {
        /// The output file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file name does not say a format the command writes.
    #[error("{}: unknown format: the file name must end in {}", path.display(), expected.join(" or "))]
    UnknownFormat {
        /// The output file.
        path: PathBuf,
        /// The extensions accepted (with the dot).
        expected: Vec<String>,
    },
}

/// Checks that a file can be written at `path`: its directory exists and takes
/// new files, `path` is not a directory (nor a file that cannot be written; an
/// existing device, pipe or link only needs to open for writing), and,
/// when `extensions` is not empty, the name ends in one of them (without the
/// dot, compared without case). Creates and removes a probe file in the
/// directory; changes nothing else.
///
/// # Errors
/// The first of the [`OutputPathError`] cases that applies.
pub fn check_output_file(path: &Path, extensions: &[&str]) -> Result<(), OutputPathError> {
    if !extensions.is_empty() {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !ext.is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(&e))) {
            return Err(OutputPathError::UnknownFormat {
                path: path.into(),
                expected: extensions.iter().map(|e| format!(".{e}")).collect(),
            });
        }
    }
    if path.is_dir() {
        return Err(OutputPathError::IsADirectory { path: path.into() });
    }
    let not_writable = |source| OutputPathError::NotWritable {
        path: path.into(),
        source,
    };
    if path.exists() && !is_plain_file(path) {
        // A device, a pipe or a link (`/dev/null`, `/dev/stdout`): written
        // through, so only opening it matters.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(not_writable)?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Err(_) => {
            return Err(OutputPathError::NoDirectory {
                path: path.into(),
                dir,
            });
        }
        Ok(m) if !m.is_dir() => {
            return Err(OutputPathError::NotADirectory {
                path: path.into(),
                dir,
            });
        }
        Ok(_) => {}
    }
    if path.exists() {
        // Opened for writing without truncating: the file stays as it is.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(not_writable)?;
    }
    probe(&dir).map_err(not_writable)
}

/// Creates and removes a probe file in `dir`: whether it takes new files. The
/// name ends in `.tmp`, which a WAL directory tolerates (and a WAL's creation
/// clears), should a kill leave it behind.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".neurograph-probe-{}.tmp", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Writes the file at `path` whole or not at all: `write` fills a temporary
/// file beside it, which is synced and renamed into place. A device or link
/// (`/dev/null`, `/dev/stdout`) is written through instead. When `write`
/// returns `Ok(None)` (it gave up, e.g. on Ctrl-C) or an error, the temporary
/// file is removed and `path` is left as it was.
///
/// # Errors
/// `write`'s error, or the I/O error of creating, syncing or renaming, as text.
pub fn write_whole<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    use std::io::Write as _;
    let through = path.symlink_metadata().is_ok() && !is_plain_file(path);
    let tmp = if through {
        path.to_path_buf()
    } else {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        path.with_file_name(name)
    };
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(file);
        let Some(value) = write(&mut out)? else {
            return Ok(None);
        };
        out.flush().map_err(|e| e.to_string())?;
        if !through {
            out.get_ref().sync_all().map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        }
        Ok(Some(value))
    })();
    if !through && !matches!(written, Ok(Some(_))) {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `path` is a regular file itself (not a link, a device or a pipe):
/// only such a file is replaced through a temporary file renamed into place;
/// anything else is written through.
pub fn is_plain_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Checks that a directory can be written at `dir`: it is a directory that
/// takes new files, or it does not exist yet and its nearest existing ancestor
/// is such a directory (so that it can be created). Creates and removes a probe
/// file; changes nothing else.
///
/// # Errors
/// [`OutputPathError::NotADirectory`] when `dir` or an ancestor is a file,
/// [`OutputPathError::NotWritable`] when the directory cannot take files.
pub fn check_output_dir(dir: &Path) -> Result<(), OutputPathError> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(OutputPathError::NotADirectory {
            path: dir.into(),
            dir: existing.into(),
        });
    }
    probe(existing).map_err(|source| OutputPathError::NotWritable {
        path: dir.into(),
        source,
    })
}

/// Whether `a` and `b` name the same file, by whatever paths (`./x` and `x`, a
/// symbolic link, a hard link on Unix). A file that does not exist yet is
/// compared by its directory (resolved) and its name.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `path` with its directory resolved (links and `.`/`..` followed), if that
/// directory exists.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// Whether the file `path` would sit directly in the existing directory `dir`
/// (however either is named). `false` when `dir` does not exist.
pub fn in_directory(path: &Path, dir: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    same_file(parent, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_writable_file_and_names_each_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("x.PNG");
        check_output_file(&ok, &["png"]).unwrap();
        assert!(!ok.exists(), "the check writes nothing at the path");
        let e = check_output_file(&dir.path().join("x"), &["png"]).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("unknown format: the file name must end in .png"),
            "{e}"
        );
        let e = check_output_file(&dir.path().join("no_such_dir/x.png"), &["png"]).unwrap_err();
        assert!(matches!(e, OutputPathError::NoDirectory { .. }), "{e}");
        assert!(e.to_string().contains("no_such_dir does not exist"), "{e}");
        let e = check_output_file(dir.path(), &[]).unwrap_err();
        assert!(matches!(e, OutputPathError::IsADirectory { .. }), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = check_output_file(&file.join("y.png"), &["png"]).unwrap_err();
        assert!(matches!(e, OutputPathError::NotADirectory { .. }), "{e}");
        check_output_dir(&dir.path().join("new/deeper")).unwrap();
        let e = check_output_dir(&file.join("wal")).unwrap_err();
        assert!(matches!(e, OutputPathError::NotADirectory { .. }), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no probe left behind"
        );
    }
}
