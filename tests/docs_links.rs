//! Every document the README, docs/ and the sources point at exists: markdown links
//! (relative to the file that holds them) and `docs/NAME.md` mentions (relative to the
//! repository root).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with one of `extensions`,
/// skipping build output and vendored code.
fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["target", "patches", ".git"].contains(&name.as_str()) && !name.starts_with('.') {
                files(&path, extensions, out);
            }
        } else if extensions.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The targets of `[text](target)` links in markdown.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            links.push(rest[..end].to_string());
        }
    }
    links
}

/// Every `docs/NAME.md` mentioned in `text`.
fn docs_mentions(text: &str) -> Vec<String> {
    let mut mentions = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("docs/") {
        let tail = &rest[at..];
        let len = tail
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.')))
            .map_or(tail.len(), |(i, _)| i);
        let name = tail[..len].trim_end_matches('.');
        if name.ends_with(".md") {
            mentions.push(name.to_string());
        }
        rest = &rest[at + 5..];
    }
    mentions
}

#[test]
fn every_referenced_document_exists() {
    let root = root();
    let mut sources = Vec::new();
    files(&root, &[".md", ".rs", ".sh", ".toml"], &mut sources);
    // This file names documents only as examples for its scanners.
    sources.retain(|f| !f.ends_with("tests/docs_links.rs"));
    let mut missing = Vec::new();
    for file in &sources {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        if shown.ends_with(".md") {
            for link in markdown_links(&text) {
                let target = link.split('#').next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if !file.parent().unwrap().join(target).exists() {
                    missing.push(format!("{shown}: link to {link}"));
                }
            }
        }
        for mention in docs_mentions(&text) {
            if !root.join(&mention).exists() {
                missing.push(format!("{shown}: mentions {mention}"));
            }
        }
        // Documents that live outside the repository are not references a reader can follow.
        for outside in ["DESIGN.md", "MODEL.md", "STYLE.md", "../shared/"] {
            if text.contains(outside) {
                missing.push(format!(
                    "{shown}: refers to {outside}, which is not in the repository"
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_scanners_find_what_they_must() {
    assert_eq!(
        markdown_links("see [a](docs/a.md#x) and [b](https://x.y) ."),
        ["docs/a.md#x", "https://x.y"]
    );
    assert_eq!(
        docs_mentions("(docs/costs.md). and `docs/wire.md`, docs/ alone"),
        ["docs/costs.md", "docs/wire.md"]
    );
}
