//! Data directories as tests handle them: copying a checked-in fixture before a node or a store
//! opens it (they write, and the fixture must not change), and reading every file's bytes to show
//! that something refused a directory without touching it.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

/// Every file under `dir` (recursively) and its bytes.
///
/// # Panics
/// When the directory cannot be read: a test helper.
pub fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(contents(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).expect("read"));
        }
    }
    out
}

/// Copies `from` to `to`, recursively.
///
/// # Panics
/// When a file cannot be read or written: a test helper.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
