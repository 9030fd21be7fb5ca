//! The module stack, checked: data flows one way (images -> bottlenecks -> trained layer
//! -> graph -> reports -> pipelines), so a module may import only modules below it, and
//! there are no import loops. A new module has to be placed in `LAYERS` to exist.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Top-level modules of `src/`, from the bottom up; modules on one line may not import
/// each other.
const LAYERS: &[&[&str]] = &[
    &["problem"],
    &["util"],
    &["image"],
    &["dataset"],
    &["backbone"],
    &["bottleneck"],
    &["train"],
    &["graph"],
    &["report"],
    &["options"],
    &["pipeline"],
    &["cli"],
    // `crate::exit` (lib.rs) and the `warn!`/`info!` macros (util) are left out of the scan.
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer of tests/architecture.rs"))
}

/// The top-level module a file of `src/` belongs to.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every `crate::<module>` named in the file, outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != "warn" && name != "info" && name != "exit" {
                found.push(name);
            }
            rest = after;
        }
    }
    found
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_import_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(module) = module_of(relative) else {
            continue;
        };
        for imported in imports(&fs::read_to_string(file).unwrap()) {
            if imported != module {
                edges.insert((module.clone(), imported), relative.display().to_string());
            }
        }
    }
    assert!(
        edges.len() > 20,
        "the scan found too few imports: {edges:?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| layer_of(to) >= layer_of(from))
        .map(|((from, to), file)| format!("{from} -> {to} ({file})"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports that go up or sideways: {upward:#?}"
    );
}
