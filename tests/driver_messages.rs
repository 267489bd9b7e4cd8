//! fred is a version range, not a pin: the few driver messages whose wording decides how an
//! error is classified (sent or not sent, redirected, retried) must still be what the fred in
//! the lock file says, with the same error kind. This reads that fred's sources, so a fred
//! update that rewords one of them fails here instead of silently turning an `Unavailable`
//! (nothing ran) into an `OutcomeUnknown`, or the reverse. The behaviour behind each message is
//! exercised against real servers in `tests/outcomes.rs`.

use std::path::{Path, PathBuf};

use forze_redis::error::DRIVER_MESSAGES;

/// The fred version in the lock file.
fn locked_fred_version() -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("Cargo.lock beside the manifest");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"fred\"" {
            let version = lines.next().expect("a version line");
            return version
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_string();
        }
    }
    panic!("fred is not in Cargo.lock");
}

/// fred's `src/` in cargo's registry.
fn fred_sources(version: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = home.join("registry").join("src");
    let found = std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
        .filter_map(|index| index.ok())
        .map(|index| index.path().join(format!("fred-{version}")).join("src"))
        .find(|p| p.is_dir());
    found.unwrap_or_else(|| {
        panic!(
            "fred {version}'s sources are not under {}: build the workspace first",
            registry.display()
        )
    })
}

fn read_all(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_all(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
            out.push('\n');
        }
    }
}

#[test]
fn every_driver_message_we_classify_is_still_what_fred_says() {
    let version = locked_fred_version();
    let mut source = String::new();
    read_all(&fred_sources(&version), &mut source);
    // Formatting aside: `Error::new(ErrorKind::Canceled, "…")` on one line or several.
    let flat: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
    for m in DRIVER_MESSAGES {
        for kind in m.kinds {
            let needle = format!("Error::new(ErrorKind::{kind}, \"{}", m.text);
            assert!(
                flat.contains(&needle),
                "fred {version} no longer says `{}` as ErrorKind::{kind}: update the \
                 classification in src/error.rs (and the tests in tests/outcomes.rs)",
                m.text
            );
        }
    }
}
