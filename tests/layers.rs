//! The crate's layers, lowest first, and who may speak to LMDB and to the
//! engine. A module may name modules of its own layer's rank or lower
//! (`crate::x`), never a higher one; `heed` is named only in the Store
//! (`store.rs`, `store/`), `openraft` only in `raft/` and `bollard` only in
//! `runtime/docker.rs`.
//!
//! store, api_error → task, security, raft → wire, service, listener → config → scheduler,
//! runtime → core → client → manager, worker → ingress, dns → node, cli

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and its rank; modules of one rank do not name
/// each other (except as listed in `SIBLINGS`).
const LAYERS: &[(&str, u32)] = &[
    ("store", 0),
    ("api_error", 0),
    ("task", 1),
    ("security", 1),
    ("raft", 1),
    ("wire", 2),
    ("service", 2),
    ("listener", 2),
    ("config", 3),
    ("scheduler", 4),
    ("runtime", 4),
    ("core", 5),
    ("client", 6),
    ("manager", 7),
    ("worker", 7),
    ("ingress", 8),
    ("dns", 8),
    ("node", 9),
    ("cli", 9),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source files of the library, by path under `src/`.
fn sources() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "{files:?}");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("readable source");
            (f.strip_prefix(&src).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The top-level module a file under `src/` belongs to.
fn module_of(path: &str) -> &str {
    let first = path.split('/').next().unwrap_or(path);
    first.strip_suffix(".rs").unwrap_or(first)
}

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Every `crate::<module>` a text names.
fn named_modules(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn no_module_names_a_higher_layer() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        let module = module_of(&path);
        if matches!(module, "lib" | "main") {
            continue;
        }
        let Some(own) = rank(module) else {
            violations.push(format!("{path}: module {module} has no layer"));
            continue;
        };
        for named in named_modules(&text) {
            if named == module {
                continue;
            }
            match rank(&named) {
                Some(r) if r < own => {}
                Some(_) => violations.push(format!("{path} ({module}) names crate::{named}")),
                None => violations.push(format!("{path} names unknown crate::{named}")),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_layer_check_sees_a_violation() {
    // The checker itself: a lower module naming a higher one is caught.
    assert_eq!(named_modules("use crate::worker::restart;"), vec!["worker"]);
    assert!(rank("task") < rank("worker"));
}

#[test]
fn only_the_store_names_heed_only_raft_names_openraft_and_only_the_docker_runtime_names_bollard() {
    let sources = sources();
    let naming = |word: &str| -> Vec<String> {
        sources
            .iter()
            .filter(|(_, text)| text.contains(word))
            .map(|(path, _)| path.clone())
            .collect()
    };
    assert_eq!(naming("heed"), vec!["store.rs", "store/raft.rs"]);
    let openraft = naming("openraft");
    assert!(
        !openraft.is_empty() && openraft.iter().all(|p| p.starts_with("raft/")),
        "{openraft:?}"
    );
    assert_eq!(naming("bollard"), vec!["runtime/docker.rs"]);
}
