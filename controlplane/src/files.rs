//! Noticing that files changed on disk without reading them: what the API's certificate and
//! token files are polled with, so a rotation takes effect without a restart.

use std::path::Path;

/// Each file's modification time, size and inode (a rename-into-place changes the inode even
/// when the time and size do not). `None` for a file that cannot be read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Vec<Option<(std::time::SystemTime, u64, u64)>>);

impl Stamp {
    pub(crate) fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(
            paths
                .into_iter()
                .map(|p| {
                    let m = std::fs::metadata(p).ok()?;
                    Some((m.modified().ok()?, m.len(), m.ino()))
                })
                .collect(),
        )
    }
}
