//! The documentation names only files that exist, and nothing cites a document that is not in
//! the repository: what a maintainer needs is written in `docs/`, where users can read it.
//!
//! No server needed: these tests only read `docs/*.md`, `README.md` and the sources.

use std::fs;
use std::path::{Path, PathBuf};

/// How the repository paths the documentation names begin.
const PREFIXES: [&str; 9] = [
    "src/",
    "actors/",
    "tests/",
    "benches/",
    "examples/",
    "docs/",
    "scripts/",
    "testkit/",
    ".ci/",
];

/// The section sign: a citation of a numbered section of some document, which no page here
/// has (written escaped, so this file does not match itself).
const SECTION_SIGN: char = '\u{a7}';

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `path` relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `docs/*.md` (sorted), then `README.md`.
fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("an entry of docs/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages.push(root().join("README.md"));
    pages
}

/// Whether a path may start right after `before`: not inside a word, a longer path, a URL or
/// a cargo feature (`forze-redis-actors/fault-injection` names no directory).
fn starts_token(before: Option<char>) -> bool {
    match before {
        None => true,
        Some(c) => !(c.is_alphanumeric() || "_-./\\:@~".contains(c)),
    }
}

/// Whether `c` ends a path: whitespace, or the punctuation Markdown puts around one.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || "`()[],;\"'|".contains(c)
}

/// The tokens of `line` that start with one of [`PREFIXES`], as written.
fn path_tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut next = 0;
    for (i, _) in line.char_indices() {
        if i < next {
            continue;
        }
        let rest = &line[i..];
        let starts = starts_token(line[..i].chars().next_back());
        if !starts || !PREFIXES.iter().any(|p| rest.starts_with(p)) {
            continue;
        }
        let len = rest.find(ends_token).unwrap_or(rest.len());
        out.push(&rest[..len]);
        next = i + len;
    }
    out
}

/// The path a token names, or `None` for a pattern (`*`, `{…}`, `<name>`). Drops an
/// `#anchor`, a `:line` suffix and trailing punctuation; `src/cache/…` names the directory.
fn named_path(token: &str) -> Option<&str> {
    if token.contains(|c: char| "*{<".contains(c)) {
        return None;
    }
    let mut path = token;
    for stop in ['\u{2026}', '#', ':'] {
        if let Some(at) = path.find(stop) {
            path = &path[..at];
        }
    }
    let path = path.trim_end_matches(|c: char| ".,;:!?".contains(c));
    if path.is_empty() {
        None
    } else {
        Some(path)
    }
}

/// The script names (`lock_extend.lua`) of `line`; a pattern such as `lock_*.lua` is skipped.
fn lua_names(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (at, _) in line.match_indices(".lua") {
        let end = at + ".lua".len();
        let longer = line[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if longer {
            continue;
        }
        let start = line[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| c.is_alphanumeric() || c == '_' || c == '-')
            .last()
            .map_or(at, |(i, _)| i);
        let pattern = line[..start]
            .chars()
            .next_back()
            .is_some_and(|c| "*{<".contains(c));
        if start < at && !pattern {
            out.push(&line[start..end]);
        }
    }
    out
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_extractor_reads_paths_as_written() {
    let line = "see `src/lock/mod.rs:42`, [x](docs/cache.md#limits) and src/cache/\u{2026} or \
                `forze-redis-actors/fault-injection`, https://example.com/src/a.rs, \
                `src/scripts/snap_*.lua`, `lock_extend.lua`, idem_*.lua and `.lua` files.";
    let named: Vec<Option<&str>> = path_tokens(line).into_iter().map(named_path).collect();
    assert_eq!(
        named,
        vec![
            Some("src/lock/mod.rs"),
            Some("docs/cache.md"),
            Some("src/cache/"),
            None,
        ]
    );
    assert_eq!(lua_names(line), vec!["lock_extend.lua"]);
}

#[test]
fn every_path_and_script_the_docs_name_exists() {
    let mut missing = Vec::new();
    for page in doc_pages() {
        let text = fs::read_to_string(&page).expect("a readable page");
        let name = shown(&page);
        for (n, line) in text.lines().enumerate() {
            for token in path_tokens(line) {
                if let Some(path) = named_path(token) {
                    if !root().join(path).exists() {
                        missing.push(format!("{name}:{}: `{token}`", n + 1));
                    }
                }
            }
            for script in lua_names(line) {
                if !root().join("src/scripts").join(script).is_file() {
                    missing.push(format!(
                        "{name}:{}: `{script}` is not in src/scripts/",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the documentation names paths or scripts that do not exist:\n{}",
        missing.join("\n")
    );
}

/// Every `.md` file name found in `text`.
fn md_names(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .filter(|t| t.ends_with(".md") && t.len() > 3)
        .map(|t| t.rsplit('/').next().unwrap_or(t))
        .collect()
}

/// Every relative path in `text` that climbs out of its directory (`../…`).
fn parent_paths(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || "()[]`'\"<>,;".contains(c))
        .filter(|t| t.starts_with("../"))
        .collect()
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "src", "actors/src"] {
        files_under(&root().join(dir), &mut files);
    }
    files.sort();
    // The Markdown files the repository has, by name.
    let mut pages = vec![root().join("README.md")];
    files_under(&root().join("docs"), &mut pages);
    let here: Vec<String> = pages
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut found = Vec::new();
    for file in &files {
        let bytes = fs::read(file).expect("a readable file");
        let text = String::from_utf8_lossy(&bytes);
        let name = shown(file);
        let dir = file.parent().unwrap_or(root());
        for (n, line) in text.lines().enumerate() {
            for page in md_names(line) {
                if !here.iter().any(|h| h == page) {
                    found.push(format!(
                        "{name}:{}: `{page}` is not in the repository",
                        n + 1
                    ));
                }
            }
            for path in parent_paths(line) {
                let target = dir.join(path.trim_end_matches(['.', ':']));
                let inside = target
                    .canonicalize()
                    .is_ok_and(|t| t.starts_with(root().canonicalize().expect("root")));
                if !inside {
                    found.push(format!("{name}:{}: `{path}` leaves the repository", n + 1));
                }
            }
            if line.contains(SECTION_SIGN) {
                found.push(format!("{name}:{}: a section sign cites a document", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "docs and sources cite documents that are not here (write what matters in docs/):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_citation_checks_see_what_they_look_for() {
    assert_eq!(
        md_names("see NOTES.md and [keys](keys.md), docs/cache.md"),
        ["NOTES.md", "keys.md", "cache.md"]
    );
    assert_eq!(
        parent_paths("read ../outside/file and (../examples/forze.toml)"),
        ["../outside/file", "../examples/forze.toml"]
    );
    assert!(format!("x {SECTION_SIGN}3").contains(SECTION_SIGN));
}
