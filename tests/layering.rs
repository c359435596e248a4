//! The module map in `src/lib.rs` holds: every module under `src/` imports
//! (`crate::...`) only modules of a lower layer, so no two modules import
//! each other and the crate reads bottom to top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `module -> layer`, read from the map in `src/lib.rs`.
fn layers(lib: &str) -> BTreeMap<String, u32> {
    let mut map = BTreeMap::new();
    let mut layer = None;
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! ")) {
        let mut words = line.split_whitespace();
        let first = words.next();
        let name = if first == Some("layer") {
            layer = words.next().and_then(|n| n.parse::<u32>().ok());
            words.next()
        } else if line.starts_with("         ") {
            first
        } else {
            continue;
        };
        if let (Some(layer), Some(name)) = (layer, name) {
            map.insert(name.trim_end_matches('/').to_string(), layer);
        }
    }
    map
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules `text` names as `crate::name` or `crate::{a, b::c}`.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect(),
            );
        }
    }
    found
}

#[test]
fn every_module_imports_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("read lib.rs");
    let layers = layers(&lib);
    assert!(
        layers.len() >= 20,
        "the module map was not found: {layers:?}"
    );
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(!files.is_empty());
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = layers.get(&module) else {
            problems.push(format!(
                "{}: module `{module}` is not in the map of src/lib.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for name in imports(&text) {
            match layers.get(&name) {
                Some(&other) if name != module && other >= own => problems.push(format!(
                    "{}: `{module}` (layer {own}) imports `{name}` (layer {other})",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}
