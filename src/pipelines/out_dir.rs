//! Output folders that one run owns at a time and that are never overwritten by surprise.
//!
//! [`OutDir::lock`] takes an exclusive advisory lock on `<folder>/.ipa.lock` (the operating
//! system's file lock, released when the process ends however it ends), so a second command
//! writing into the same folder stops at once with the holder's name instead of mixing its
//! files with the first one's. [`OutDir::prepare`] then decides what an existing folder's
//! contents mean: a refusal unless the user asked to resume or to overwrite.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The lock file inside an output folder.
pub const LOCK_FILE: &str = ".ipa.lock";

/// What to do with an output folder that already holds files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Existing {
    /// Stop with an error that lists what is there (the default).
    #[default]
    Refuse,
    /// Keep the files: the run continues the one that wrote them (`--resume`; the run checks
    /// that it is the same run).
    Resume,
    /// Delete them first (`--overwrite`).
    Overwrite,
}

impl Existing {
    /// The policy of a command's `--resume` and `--overwrite` flags.
    pub fn from_flags(resume: bool, overwrite: bool) -> Result<Self> {
        match (resume, overwrite) {
            (true, true) => Err(Error::Config(
                "--resume continues the run in the output folder and --overwrite deletes it: \
                 give one of them"
                    .into(),
            )),
            (true, false) => Ok(Existing::Resume),
            (false, true) => Ok(Existing::Overwrite),
            (false, false) => Ok(Existing::Refuse),
        }
    }
}

/// An output folder locked by this process (until the value is dropped).
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    _lock: File,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The holder line of a lock file, with its age.
fn describe_holder(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "another process".into();
    }
    // `pid <n> (<command>) since <unix seconds>`
    match text
        .rsplit_once(" since ")
        .and_then(|(who, t)| Some((who, t.parse::<u64>().ok()?)))
    {
        Some((who, started)) => {
            let age = now_secs().saturating_sub(started);
            format!("{who}, started {age} s ago")
        }
        None => text.to_string(),
    }
}

impl OutDir {
    /// Creates `path` if needed and locks it for `command` (e.g. `ipa train`). Fails at once,
    /// naming the folder and the holder, when another process holds the lock.
    pub fn lock(path: &Path, command: &str) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(Error::file(path, "is a file; the output must be a folder"));
        }
        std::fs::create_dir_all(path).map_err(|e| Error::file(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::file(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::file(
                    path,
                    format!(
                        "is in use by {}; wait for it to finish or choose another --out",
                        describe_holder(&holder)
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::file(&lock_path, format!("cannot lock: {e}")))
            }
        }
        let line = format!(
            "pid {} ({command}) since {}\n",
            std::process::id(),
            now_secs()
        );
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .map_err(|e| Error::file(&lock_path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder's entries other than the lock file, sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .map_err(|e| Error::file(&self.path, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != LOCK_FILE)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes everything in the folder but the lock.
    pub fn clear(&self) -> Result<()> {
        for name in self.entries()? {
            let path = self.path.join(&name);
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| Error::file(&path, format!("cannot remove: {e}")))?;
        }
        Ok(())
    }

    /// Applies `existing` to what the folder holds: nothing to do when it is empty; otherwise
    /// keep it ([`Existing::Resume`]), delete it ([`Existing::Overwrite`]) or refuse with an
    /// error that lists a few entries. `what` says what the folder would receive (e.g.
    /// "a training run"); `resumable` says whether `--resume` is an option to suggest.
    pub fn prepare(&self, existing: Existing, what: &str, resumable: bool) -> Result<()> {
        let entries = self.entries()?;
        if entries.is_empty() {
            return Ok(());
        }
        match existing {
            Existing::Resume => Ok(()),
            Existing::Overwrite => self.clear(),
            Existing::Refuse => {
                let mut shown: Vec<String> = entries.iter().take(4).cloned().collect();
                if entries.len() > shown.len() {
                    shown.push(format!("… {} entries in all", entries.len()));
                }
                let options = if resumable {
                    "pass --resume to continue the run it holds, --overwrite to replace it"
                } else {
                    "pass --overwrite to replace its contents"
                };
                Err(Error::file(
                    &self.path,
                    format!(
                        "is not empty ({}); refusing to write {what} over it: {options}, or \
                         choose another --out",
                        shown.join(", ")
                    ),
                ))
            }
        }
    }
}
