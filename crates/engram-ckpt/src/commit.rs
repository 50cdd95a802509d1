//! Multi-file outputs committed as one: an output folder is built in a fresh sibling folder
//! (`.NAME.engram-new-PID-SEQ`) and switched into place by one atomic rename, so that a reader
//! sees the old folder or the new one, never a mix.
//!
//! Where the destination exists, the switch is `renameat2(RENAME_EXCHANGE)`; the old content
//! then sits under the staging name and is removed. Files of the old folder that the new
//! output does not replace and that are not stale outputs (old weights, old index) are
//! hard-linked into the new folder before the switch; subfolders (which cannot be linked) are
//! moved after it. A file system without `RENAME_EXCHANGE` gets two renames instead (old
//! folder aside as `.NAME.engram-old-PID-SEQ`, new folder in): for that instant the folder is
//! absent, never mixed, and a killed run's old folder is put back by the next run.
//!
//! Staging folders of killed runs are found (their process is gone) and cleaned by the next
//! run that writes into the same parent folder: one killed before its switch (it still holds
//! the `.engram-staging` mark) is removed whole; one killed after it holds the replaced old
//! folder, whose subfolders not yet moved back go into the destination before the rest is
//! removed. The replaced folder's permissions are given to the new one.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file this process has open as an input.
struct Input {
    dev: u64,
    ino: u64,
    /// Canonical.
    path: PathBuf,
    /// The registration, removed when its [`OpenInput`] drops.
    id: u64,
    /// Whether a folder holding it is protected too (models), or only the file (small inputs).
    folder: bool,
}

static INPUTS: Mutex<Vec<Input>> = Mutex::new(Vec::new());

/// An input file's registration, removed when the file is closed (dropped).
pub struct OpenInput(u64);

impl OpenInput {
    /// Registers a model file: no output may be it, or replace a folder holding it.
    pub fn register(path: &Path, meta: &std::fs::Metadata) -> OpenInput {
        Self::add(path, meta, true)
    }

    fn add(path: &Path, meta: &std::fs::Metadata, folder: bool) -> OpenInput {
        use std::os::unix::fs::MetadataExt;
        let id = SEQ.fetch_add(1, Ordering::Relaxed);
        let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Ok(mut g) = INPUTS.lock() {
            g.push(Input {
                dev: meta.dev(),
                ino: meta.ino(),
                path: canon,
                id,
                folder,
            });
        }
        OpenInput(id)
    }
}

impl Drop for OpenInput {
    fn drop(&mut self) {
        if let Ok(mut g) = INPUTS.lock() {
            g.retain(|e| e.id != self.0);
        }
    }
}

/// Refuses an output path that is, or holds, a file this process has open as an input: the
/// same file under another spelling, through a symlink or a hard link, or a folder holding it.
pub fn refuse_input(dest: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let canon = match dest.canonicalize() {
        Ok(c) => c,
        Err(_) => match (dest.parent(), dest.file_name()) {
            (Some(p), Some(n)) => {
                let p = if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                };
                p.canonicalize()
                    .map(|c| c.join(n))
                    .unwrap_or_else(|_| dest.to_path_buf())
            }
            _ => dest.to_path_buf(),
        },
    };
    let id = std::fs::metadata(dest).ok().map(|m| (m.dev(), m.ino()));
    let g = INPUTS
        .lock()
        .map_err(|_| Error::Invalid("input registry poisoned".into()))?;
    // A model file written into the folder of an input model would change that model (a new
    // index beside its weights makes it another model).
    let model_name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_model_file);
    for Input {
        dev,
        ino,
        path,
        folder,
        ..
    } in g.iter()
    {
        let same_folder = *folder && model_name && path.parent() == canon.parent();
        let holds = *folder && path.starts_with(&canon);
        if id == Some((*dev, *ino)) || *path == canon || holds || same_folder {
            return Err(Error::format(
                dest,
                format!(
                    "output would overwrite {}, an input of this run; write elsewhere",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

const NEW: &str = ".engram-new-";
const OLD: &str = ".engram-old-";
/// Inside a staging folder until its switch: a dead run's staging folder holding it holds
/// only new, uncommitted output; without it, the replaced old folder.
const MARK: &str = ".engram-staging";

/// An output folder under construction. Write into [`Staged::path`], then [`Staged::commit`];
/// dropped without a commit, the staging folder is removed and the destination is unchanged.
pub struct Staged {
    dest: PathBuf,
    stage: PathBuf,
    created_parents: Vec<PathBuf>,
    done: bool,
    /// Locks held while this run lives: on the staging folder, and from the switch on, on the
    /// replaced folder. A later run takes a staging folder for dead only if it can lock it
    /// (process IDs alone mislead across PID namespaces: containers sharing a volume).
    _locks: Vec<std::fs::File>,
}

/// An exclusive lock on `path` (a folder or file) held by the returned handle; `None` if
/// another live process holds it.
pub(crate) fn try_lock(path: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: a valid open descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn sibling(dest: &Path, tag: &str) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}{tag}{}-{seq}", std::process::id()))
}

/// An existing output folder can be replaced as a whole only if this process may change it
/// (remove the old model's files, move the user's subfolders) and nothing is mounted on it or
/// in it (a mount cannot be moved): refused up front otherwise.
fn check_replaceable(dest: &Path, abs: &Path, m: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(abs.as_os_str().as_bytes())
        .map_err(|_| Error::format(dest, "path holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(Error::format(
            dest,
            "output folder is not writable by this user; engram replaces it as a whole",
        ));
    }
    let parent_dev = abs
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|p| p.dev());
    if parent_dev.is_some_and(|d| d != m.dev()) {
        return Err(Error::format(
            dest,
            "output folder is a mount point; name a folder inside it",
        ));
    }
    for e in std::fs::read_dir(abs)
        .map_err(|e| Error::io(abs, e))?
        .flatten()
    {
        let sub = std::fs::symlink_metadata(e.path()).map_err(|err| Error::io(&e.path(), err))?;
        if sub.is_dir() && sub.dev() != m.dev() {
            return Err(Error::format(
                &e.path(),
                "is a mount point inside the output folder; engram cannot move it (unmount it or write elsewhere)",
            ));
        }
    }
    Ok(())
}

/// The absolute form of a destination: its parent canonicalized (created if missing, the
/// folders created returned), a symlinked destination resolved to the folder it names.
fn resolve(dest: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
        let real = dest.canonicalize().map_err(|e| Error::io(dest, e))?;
        return Ok((real, Vec::new()));
    }
    let name = dest
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| Error::format(dest, "output folder must end in a folder name"))?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let created: Vec<PathBuf> = parent
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect();
    if let Some(file) = parent
        .ancestors()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))
    {
        return Err(Error::format(
            file,
            "is not a folder, so no output folder can be made under it",
        ));
    }
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let parent = parent.canonicalize().map_err(|e| Error::io(parent, e))?;
    Ok((parent.join(name), created))
}

impl Staged {
    /// Starts an output folder `dest` (created by the commit if it does not exist). Refuses a
    /// destination that is a file, or the current folder or one above it (the switch would
    /// leave this process and the user's shell in a removed folder).
    pub fn new(dest: &Path) -> Result<Staged> {
        refuse_input(dest)?;
        let (abs, created_parents) = resolve(dest)?;
        if let Ok(m) = std::fs::symlink_metadata(&abs)
            && !m.is_dir()
        {
            return Err(Error::format(
                dest,
                "output folder exists and is not a folder",
            ));
        }
        if let Ok(m) = std::fs::metadata(&abs) {
            check_replaceable(dest, &abs, &m)?;
        }
        if let Ok(cwd) = std::env::current_dir().and_then(|c| c.canonicalize())
            && cwd.starts_with(&abs)
        {
            return Err(Error::format(
                dest,
                "output folder is the current folder (or holds it); engram replaces an output folder as a whole, so name one the shell is not in",
            ));
        }
        if let Some(parent) = abs.parent() {
            clean_dead(parent);
        }
        let stage = sibling(&abs, NEW);
        std::fs::create_dir(&stage).map_err(|e| Error::io(&stage, e))?;
        let lock = try_lock(&stage).ok_or_else(|| Error::format(&stage, "cannot lock"))?;
        let staged = Staged {
            dest: abs,
            stage,
            created_parents,
            done: false,
            _locks: vec![lock],
        };
        std::fs::write(staged.stage.join(MARK), b"").map_err(|e| Error::io(&staged.stage, e))?;
        Ok(staged)
    }

    /// The folder to write the output into.
    pub fn path(&self) -> &Path {
        &self.stage
    }

    /// The destination, absolute.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Switches the staged folder into place. Entries of the old folder that the new one does
    /// not hold are kept, except those `stale` names (outputs of the same kind, such as old
    /// shards) and temporary files.
    pub fn commit(mut self, stale: &dyn Fn(&str) -> bool) -> Result<()> {
        self.refuse_replacing_inputs(stale)?;
        let old = std::fs::symlink_metadata(&self.dest).ok();
        let mut later = Vec::new();
        if let Some(m) = &old {
            later = self.link_kept(stale)?;
            // A mark in the live folder is a left-over of a run killed just after its switch.
            let _ = std::fs::remove_file(self.dest.join(MARK));
            // The replaced folder stays locked while this run finishes with it.
            self._locks.extend(try_lock(&self.dest));
            give_owner(&self.stage, m);
        }
        sync_dir(&self.stage)?;
        let replaced = if old.is_none() {
            std::fs::rename(&self.stage, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
            None
        } else if exchange(&self.stage, &self.dest).map_err(|e| Error::io(&self.dest, e))? {
            // The staging name now holds the old folder.
            Some(self.stage.clone())
        } else {
            let aside = sibling(&self.dest, OLD);
            std::fs::rename(&self.dest, &aside).map_err(|e| Error::io(&self.dest, e))?;
            if let Err(e) = std::fs::rename(&self.stage, &self.dest) {
                let _ = std::fs::rename(&aside, &self.dest);
                return Err(Error::io(&self.dest, e));
            }
            Some(aside)
        };
        self.done = true;
        let _ = std::fs::remove_file(self.dest.join(MARK));
        if let Some(m) = &old {
            std::fs::set_permissions(&self.dest, m.permissions())
                .map_err(|e| Error::io(&self.dest, e))?;
        }
        if let Some(r) = replaced {
            finish_replaced(&r, &self.dest, &later);
        }
        if let Some(parent) = self.dest.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Refuses the switch where it would replace or drop an input of this run that lies in
    /// the destination (a results file the new output also writes, say).
    fn refuse_replacing_inputs(&self, stale: &dyn Fn(&str) -> bool) -> Result<()> {
        let g = INPUTS
            .lock()
            .map_err(|_| Error::Invalid("input registry poisoned".into()))?;
        for Input { path, .. } in g.iter() {
            let Ok(rel) = path.strip_prefix(&self.dest) else {
                continue;
            };
            let top = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy());
            let nested_model = rel
                .parent()
                .is_some_and(|p| !p.as_os_str().is_empty() && self.stage.join(p).is_dir())
                && rel
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_model_file);
            let replaced = std::fs::symlink_metadata(self.stage.join(rel)).is_ok()
                || top.is_some_and(|t| rel.components().count() == 1 && stale(&t))
                || nested_model;
            if replaced {
                return Err(Error::format(
                    &self.dest,
                    format!(
                        "output would overwrite {}, an input of this run; write elsewhere",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hard-links the old folder's kept files into the staged one; returns the kept entries
    /// that cannot be linked (folders, special files), relative paths, to be moved after the
    /// switch.
    fn link_kept(&self, stale: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
        let mut later = Vec::new();
        link_kept_in(&self.dest, &self.stage, Path::new(""), stale, &mut later)?;
        Ok(later)
    }
}

/// [`Staged::link_kept`] for the old folder `old` and its new counterpart `new` (at `rel`
/// below the output). A file the new output replaces gives it its permissions; a subfolder
/// the new output also holds (a task model of `tall`, a fine-tune of `synth`) keeps the user's
/// files in it the same way, its own stale files being the model files it replaces.
fn link_kept_in(
    old: &Path,
    new: &Path,
    rel: &Path,
    stale: &dyn Fn(&str) -> bool,
    later: &mut Vec<PathBuf>,
) -> Result<()> {
    let rd = std::fs::read_dir(old).map_err(|e| Error::io(old, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(old, e))?;
        let name = e.file_name();
        let text = name.to_string_lossy();
        let (from, to) = (e.path(), new.join(&name));
        let ft = e.file_type().map_err(|err| Error::io(&from, err))?;
        if let Ok(t) = std::fs::symlink_metadata(&to) {
            if ft.is_dir() && t.is_dir() {
                link_kept_in(&from, &to, &rel.join(&name), &is_model_file, later)?;
            } else if !ft.is_symlink() && !t.file_type().is_symlink() {
                let mode = e
                    .metadata()
                    .map_err(|err| Error::io(&from, err))?
                    .permissions();
                std::fs::set_permissions(&to, mode).map_err(|err| Error::io(&to, err))?;
            }
            continue;
        }
        if stale(&text) || is_temporary(&text) {
            continue;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|err| Error::io(&from, err))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|err| Error::io(&to, err))?;
        } else if ft.is_file() {
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|err| Error::io(&from, err))?;
            }
        } else {
            later.push(rel.join(&name));
        }
    }
    Ok(())
}

/// Files of a model folder that describe its weights, and go with them: the weights (standard
/// names) and the side files of Hugging Face models (config, tokenizer, generation settings).
/// An output folder replacing a model does not keep the old model's copies of them.
pub fn is_model_file(name: &str) -> bool {
    const SIDE: &[&str] = &[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "preprocessor_config.json",
        "chat_template.json",
        "chat_template.jinja",
    ];
    crate::writer::is_weight_name(name) || SIDE.contains(&name)
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.stage);
            for d in &self.created_parents {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Gives what this process created in `dir` (recursively) the owner and group of the folder
/// it replaces (`old`), so that a folder replaced by root stays its user's. Best effort; a
/// no-op when they already match.
fn give_owner(dir: &Path, old: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if old.uid() == me && old.gid() == std::fs::metadata(dir).map_or(old.gid(), |m| m.gid()) {
        return;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::os::unix::fs::lchown(&d, Some(old.uid()), Some(old.gid()));
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ours = e.metadata().is_ok_and(|m| m.uid() == me);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if ours {
                let _ = std::os::unix::fs::lchown(e.path(), Some(old.uid()), Some(old.gid()));
            }
        }
    }
}

/// Names engram uses for temporary files and staging folders.
pub(crate) fn is_temporary(name: &str) -> bool {
    name == MARK || name.contains(".engram-tmp-") || name.contains(NEW) || name.contains(OLD)
}

/// `renameat2(a, b, RENAME_EXCHANGE)`; `Ok(false)` where the file system cannot exchange.
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("path holds a NUL byte"))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(e),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Moves `names` (relative paths) from `from` into `to` where `to` does not hold them yet;
/// whether every one of them is now in `to`.
fn move_back(from: &Path, to: &Path, names: &[PathBuf]) -> bool {
    let mut all = true;
    for n in names {
        let dst = to.join(n);
        if std::fs::symlink_metadata(&dst).is_err() {
            all &= std::fs::rename(from.join(n), dst).is_ok();
        }
    }
    all
}

/// After a switch: the replaced folder `old` gives its kept subfolders (`later`) back to
/// `dest`, then goes. Were a move to fail, only its files are removed, so that no user
/// folder is lost.
fn finish_replaced(old: &Path, dest: &Path, later: &[PathBuf]) {
    if move_back(old, dest, later) {
        let _ = std::fs::remove_dir_all(old);
    } else {
        remove_files(old);
    }
}

/// The subfolders of `old` (relative paths) that `new` lacks, looking inside subfolders both
/// hold: what a run killed after its switch had not yet moved back.
fn missing_dirs(old: &Path, new: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(old).into_iter().flatten().flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let there = new.join(e.file_name());
        match std::fs::symlink_metadata(&there) {
            Err(_) => out.push(rel.join(e.file_name())),
            Ok(m) if m.is_dir() => missing_dirs(&e.path(), &there, &rel.join(e.file_name()), out),
            Ok(_) => {}
        }
    }
}

/// Removes the files of a folder, then the folder if it is empty.
fn remove_files(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Cleans the staging folders of dead runs in `parent`, whatever output they were for.
/// Before its switch a staging folder (marked) holds only uncommitted output: removed. After
/// it (unmarked), it holds the replaced folder: its subfolders that the destination lacks are
/// moved there (a killed run had not moved them back yet), the rest is removed. A folder set
/// aside (`.engram-old-`) while the destination is missing is put back. A mark left in a
/// destination by a run killed just after its switch is removed.
fn clean_dead(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some((name, tag, tail)) = [NEW, OLD].iter().find_map(|tag| {
            let at = file.rfind(tag)?;
            Some((file.get(1..at)?, *tag, &file[at + tag.len()..]))
        }) else {
            continue;
        };
        if !file.starts_with('.')
            || name.is_empty()
            || !e.file_type().is_ok_and(|t| t.is_dir())
            || tail
                .split('-')
                .next()
                .is_none_or(|p| p.parse::<u32>().is_err())
        {
            continue;
        }
        let path = e.path();
        // Its run is dead if nobody holds its lock (whatever PID namespace it ran in).
        let Some(_lock) = try_lock(&path) else {
            continue;
        };
        let dest = parent.join(name);
        let dest_there = std::fs::symlink_metadata(&dest).is_ok();
        if dest_there {
            let _ = std::fs::remove_file(dest.join(MARK));
        }
        if tag == NEW && path.join(MARK).exists() {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        if tag == OLD && !dest_there {
            let _ = std::fs::rename(&path, &dest);
            continue;
        }
        if dest_there {
            let mut dirs = Vec::new();
            missing_dirs(&path, &dest, Path::new(""), &mut dirs);
            finish_replaced(&path, &dest, &dirs);
        } else {
            remove_files(&path);
        }
    }
}

/// Reads a small input file (a run file, a merge config, a results file): refused unless it
/// is a regular file (a FIFO would block, a device never end) of at most `limit` bytes, and
/// registered as an input of this run for as long as the returned guard lives (no output may
/// be that file; a folder holding it may be replaced, as the file is kept).
pub fn read_input(path: &Path, what: &str, limit: u64) -> Result<(Vec<u8>, OpenInput)> {
    let meta = crate::file::regular_file(path, what)?;
    if meta.len() > limit {
        return Err(Error::format(
            path,
            format!(
                "is {} bytes; {what} is expected to be at most {limit}",
                meta.len()
            ),
        ));
    }
    // Read whole: replacing a folder that holds it keeps it (a user file), so only the file
    // itself is protected.
    let guard = OpenInput::add(path, &meta, false);
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok((data, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Path, s: &str) {
        std::fs::write(p, s).unwrap();
    }
    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn commits_new_and_replaces_old_keeping_foreign_entries() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("a/out");
        let s = Staged::new(&out).unwrap();
        put(&s.path().join("model.safetensors"), "one");
        assert!(!out.exists());
        s.commit(&|_| false).unwrap();
        assert_eq!(read(&out.join("model.safetensors")), "one");
        // The old folder holds a stale shard, a user file and a user folder.
        put(&out.join("model-00001-of-00002.safetensors"), "stale");
        put(&out.join("notes.txt"), "mine");
        std::fs::create_dir(out.join(".git")).unwrap();
        put(&out.join(".git/HEAD"), "ref");
        let s = Staged::new(&out).unwrap();
        put(&s.path().join("model.safetensors"), "two");
        s.commit(&|n| n.starts_with("model")).unwrap();
        assert_eq!(read(&out.join("model.safetensors")), "two");
        assert!(!out.join("model-00001-of-00002.safetensors").exists());
        assert_eq!(read(&out.join("notes.txt")), "mine");
        assert_eq!(read(&out.join(".git/HEAD")), "ref");
        let left: Vec<_> = std::fs::read_dir(t.path().join("a")).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging folder left: {left:?}");
    }

    #[test]
    fn an_abandoned_stage_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        put(&out.join("model.safetensors"), "old");
        {
            let s = Staged::new(&out).unwrap();
            put(&s.path().join("model.safetensors"), "half");
        }
        assert_eq!(read(&out.join("model.safetensors")), "old");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        // A file where the folder should be, and missing parents created then removed.
        put(&t.path().join("file"), "x");
        assert!(Staged::new(&t.path().join("file")).is_err());
        drop(Staged::new(&t.path().join("p/q/r")).unwrap());
        assert!(!t.path().join("p").exists());
    }

    #[test]
    fn dead_runs_are_cleaned_and_set_aside_folders_restored() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        // A dead run's stage before its switch (new content only) ...
        let dead_new = t.path().join(".out.engram-new-999999999-0");
        std::fs::create_dir(&dead_new).unwrap();
        put(&dead_new.join("model.safetensors"), "half");
        // ... and a dead run that set the old folder aside and was killed before the new one
        // went in: the old folder comes back.
        let dead_old = t.path().join(".out.engram-old-999999999-1");
        std::fs::create_dir(&dead_old).unwrap();
        put(&dead_old.join("model.safetensors"), "old");
        let s = Staged::new(&out).unwrap();
        assert!(!dead_new.exists());
        assert!(!dead_old.exists());
        assert_eq!(read(&out.join("model.safetensors")), "old");
        drop(s);
        // A dead run killed before its switch, with a subfolder of new output: removed whole,
        // nothing of it reaches the destination.
        let dead_marked = t.path().join(".out.engram-new-999999999-3");
        std::fs::create_dir_all(dead_marked.join("task-a")).unwrap();
        put(&dead_marked.join(MARK), "");
        put(&dead_marked.join("task-a/model.safetensors"), "new");
        // A stage of another output in the same folder is cleaned too.
        let other = t.path().join(".other.engram-new-999999999-4");
        std::fs::create_dir_all(&other).unwrap();
        put(&other.join(MARK), "");
        drop(Staged::new(&out).unwrap());
        assert!(!dead_marked.exists() && !other.exists());
        assert!(!out.join("task-a").exists());
        // A dead run killed after its switch, before moving a user folder back.
        let dead = t.path().join(".out.engram-new-999999999-2");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        put(&dead.join("sub/f"), "user");
        put(&dead.join("model.safetensors"), "older");
        drop(Staged::new(&out).unwrap());
        assert_eq!(read(&out.join("sub/f")), "user");
        assert!(!dead.exists());
        // Replacing again removes the replaced folder whole, subfolders of old output included.
        std::fs::create_dir_all(out.join("gone")).unwrap();
        let s = Staged::new(&out).unwrap();
        std::fs::create_dir(s.path().join("gone")).unwrap();
        s.commit(&|_| false).unwrap();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        assert!(!out.join(MARK).exists());
    }

    #[test]
    fn keeps_the_replaced_folders_permissions_and_refuses_special_inputs() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
        Staged::new(&out).unwrap().commit(&|_| false).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        let e = read_input(Path::new("/dev/zero"), "a run file", 1 << 20)
            .err()
            .unwrap();
        assert!(e.to_string().contains("device"), "{e}");
        let big = t.path().join("big.toml");
        std::fs::write(&big, vec![b' '; 100]).unwrap();
        assert!(read_input(&big, "a run file", 99).is_err());
        let (data, guard) = read_input(&big, "a run file", 100).unwrap();
        assert_eq!(data.len(), 100);
        assert!(refuse_input(&big).is_err());
        drop(guard);
        assert!(refuse_input(&big).is_ok());
    }

    #[test]
    fn a_staging_folder_locked_by_a_live_run_is_left_alone() {
        // Its process ID looks dead here (another PID namespace), but its lock is held.
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join(".out.engram-new-999999999-7");
        std::fs::create_dir(&live).unwrap();
        put(&live.join(MARK), "");
        let held = try_lock(&live).unwrap();
        drop(Staged::new(&t.path().join("out")).unwrap());
        assert!(live.join(MARK).exists());
        drop(held);
        drop(Staged::new(&t.path().join("out")).unwrap());
        assert!(!live.exists());
    }

    #[test]
    fn refuses_the_current_folder() {
        let cwd = std::env::current_dir().unwrap();
        let e = Staged::new(&cwd).err().unwrap().to_string();
        assert!(e.contains("current folder"), "{e}");
    }
}
