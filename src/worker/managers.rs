//! The managers a worker has learnt: a manager of several tells every
//! heartbeat's answer the managers' URLs, and the worker keeps the last
//! list it was told in `<data_dir>/managers` (one URL a line), so that
//! after a restart it still finds the cluster when the manager its config
//! names is gone. The config's URLs are asked first, then the learnt ones.

use std::path::{Path, PathBuf};

use crate::client::distinct_urls;
use crate::security::pki::write_file;

/// Where a node keeps the managers it learnt.
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("managers")
}

/// The URLs kept in `path` (none when it is missing or unreadable).
pub fn load(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => distinct_urls(text.lines()),
        Err(_) => Vec::new(),
    }
}

/// Keeps `urls` in `path`, whole or not at all.
pub fn save(path: &Path, urls: &[String]) -> Result<(), crate::security::SecurityError> {
    let mut text = urls.join("\n");
    text.push('\n');
    write_file(path, text.as_bytes(), false)
}

/// The URLs a worker asks at its start: the configured ones, then those it
/// learnt, each once, comma-separated.
pub fn at_start(configured: &str, learnt: &[String]) -> String {
    distinct_urls(
        configured
            .split(',')
            .chain(learnt.iter().map(String::as_str)),
    )
    .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_saved_is_loaded_and_asked_after_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        assert!(load(&path).is_empty(), "nothing learnt yet");
        let learnt = vec![
            "https://10.0.0.2:5555".to_string(),
            "https://10.0.0.1:5555".to_string(),
            "https://10.0.0.3:5555".to_string(),
        ];
        save(&path, &learnt).unwrap();
        assert_eq!(load(&path), learnt);
        assert_eq!(
            at_start("https://10.0.0.1:5555/", &load(&path)),
            "https://10.0.0.1:5555,https://10.0.0.2:5555,https://10.0.0.3:5555"
        );
        assert_eq!(
            at_start("https://10.0.0.9:5555", &[]),
            "https://10.0.0.9:5555"
        );
    }
}
