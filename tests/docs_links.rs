//! Every document the README, docs/ and the sources point at exists inside the
//! repository: markdown links (relative to the file that holds them) and every
//! `NAME.md` mentioned (a path relative to the repository root or to the file, or a
//! bare name some file of the repository has).

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

/// Every `NAME.md` mentioned in `text`, with the path before it.
fn md_mentions(text: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.');
    let mut mentions = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(".md") {
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !is_path(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = at + 3;
        let next_is_path = rest[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name = &rest[start..end];
        // `*.md` and `.mdx` are not names of documents.
        if !next_is_path && name.len() > ".md".len() {
            mentions.push(name.to_string());
        }
        rest = &rest[end..];
    }
    mentions
}

/// Whether `mention`, found in `file`, names a file inside `root`.
fn resolves(root: &Path, file: &Path, mention: &str, names: &[String]) -> bool {
    if !mention.contains('/') {
        return names.iter().any(|n| n == mention);
    }
    [root.join(mention), file.parent().unwrap().join(mention)]
        .iter()
        .any(|p| {
            p.exists()
                && p.canonicalize()
                    .is_ok_and(|p| p.starts_with(root.canonicalize().unwrap()))
        })
}

#[test]
fn every_referenced_document_exists() {
    let root = root();
    let mut sources = Vec::new();
    files(&root, &[".md", ".rs", ".sh", ".toml"], &mut sources);
    // This file names documents only as examples for its scanners.
    sources.retain(|f| !f.ends_with("tests/docs_links.rs"));
    let names: Vec<String> = sources
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
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
        for mention in md_mentions(&text) {
            if !resolves(&root, file, &mention, &names) {
                missing.push(format!(
                    "{shown}: mentions {mention}, which is not in the repository"
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
        md_mentions("(docs/costs.md). and `README.md`, ../other/X.md, a.mdx, docs/ alone"),
        ["docs/costs.md", "README.md", "../other/X.md"]
    );
    assert!(md_mentions("`*.md`, docs/*.md").is_empty());
    // A document that exists, but outside the repository, does not count.
    let base = std::env::temp_dir().join(format!("zkinfer-docs-links-{}", std::process::id()));
    std::fs::create_dir_all(base.join("repo/docs")).unwrap();
    for file in ["repo/docs/a.md", "outside.md"] {
        std::fs::write(base.join(file), "").unwrap();
    }
    let (repo, here) = (base.join("repo"), base.join("repo/docs/a.md"));
    let names = ["a.md".to_string()];
    assert!(resolves(&repo, &here, "a.md", &names));
    assert!(resolves(&repo, &here, "docs/a.md", &names));
    assert!(!resolves(&repo, &here, "b.md", &names));
    assert!(!resolves(&repo, &here, "docs/b.md", &names));
    assert!(base.join("outside.md").exists());
    assert!(!resolves(&repo, &here, "../../outside.md", &names));
    std::fs::remove_dir_all(&base).unwrap();
}
