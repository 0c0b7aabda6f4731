//! The layering rules of docs/ARCHITECTURE.md, checked on the source text so a change that
//! breaks them fails `cargo test` instead of waiting for a reader to notice.
//!
//! * No import cycles between the library's modules (one file, one module).
//! * Top-level modules import only from their own layer or the layers below it.
//! * clap and signal handling only in the binary (`src/main.rs`, `src/cli/`).
//!
//! A module's imports are the `crate::…`, `super::…` and `quiclab::…` paths in its code (not in
//! comments). `mod` declarations and a `mod.rs`'s `pub use` of its own children are its
//! namespace, not a dependency, so they are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest layer first. A module may import from its own layer
/// and every layer below, never from a layer above.
const LAYERS: &[&[&str]] = &[
    // Plumbing: knobs, certificates, per-connection facts.
    &["config", "tls", "stats", "conn"],
    // Transport endpoints: the quinn endpoint and the TLS/TCP listener, service-agnostic.
    &["quic", "tcp"],
    // Protocols on the transports: the web site and its clients, the MQTT transports and client.
    &["web", "client", "mqtt"],
    // The server: both listeners, every service registered by ALPN.
    &["server"],
    // Experiments and tools built on servers and clients.
    &["lab", "fuzzing"],
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/web/files.rs` → `["web", "files"]`; `src/web/mod.rs` → `["web"]`; `src/lib.rs` → `[]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("file under src/");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The source with comments and string literals blanked, so paths in docs do not count.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"' or '/'.
            out.push_str("' '");
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths a file names: `crate::a::b`, `super::x` (resolved against `here`), and each
/// branch of a brace group (`crate::{a, b::c}`), as absolute module paths.
fn imported_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (start, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
        // Skip `foo_crate::` and the like.
        if start > 0 {
            let prev = code.as_bytes()[start - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':' {
                continue;
            }
        }
        // Resolve the prefix: a run of `super::` climbs one level each.
        let mut base: Vec<String>;
        let mut rest = &code[start..];
        if rest.starts_with("crate::") {
            base = Vec::new();
            rest = &rest["crate::".len()..];
        } else {
            // The module a `super` is relative to: a file's own module, whose parent is `super`.
            base = here.to_vec();
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
        }
        for branch in expand(rest) {
            let mut p = base.clone();
            p.extend(branch);
            out.push(p);
        }
    }
    out
}

/// `a::b::{c, d::e}` → `[[a, b, c], [a, b, d, e]]`; `{a, b}` → `[[a], [b]]` (one brace level
/// is enough here).
fn expand(rest: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        if let Some(inner) = s.strip_prefix('{') {
            let close = inner.find('}').unwrap_or(inner.len());
            return inner[..close]
                .split(',')
                .map(|b| {
                    let mut v = segs.clone();
                    v.extend(expand(b.trim()).into_iter().next().unwrap_or_default());
                    v
                })
                .collect();
        }
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
        if end == 0 {
            return vec![segs];
        }
        segs.push(s[..end].to_string());
        match s[end..].strip_prefix("::") {
            Some(r) => s = r,
            None => return vec![segs],
        }
    }
}

struct Crate {
    /// Module path → file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// Module → modules it imports (the longest known module prefix of each path).
    deps: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn library() -> Crate {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let cli = src_dir().join("cli");
    files.retain(|f| !f.starts_with(&cli) && !f.ends_with("main.rs"));
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().map(|f| (module_path(f), f.clone())).collect();
    let mut deps = BTreeMap::new();
    for (m, file) in &modules {
        let src = std::fs::read_to_string(file).expect("readable source");
        let is_mod_rs = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        // A mod.rs re-exporting its children is its namespace, not a dependency.
        let code: String = code_only(&src)
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(is_mod_rs && (t.starts_with("pub use ") || t.starts_with("pub(crate) use ")))
                    && !t.starts_with("mod ")
                    && !t.starts_with("pub mod ")
                    && !t.starts_with("pub(crate) mod ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut set = BTreeSet::new();
        for p in imported_paths(&code, m) {
            // The longest prefix that is a module of this crate.
            let target = (0..=p.len()).rev().map(|n| p[..n].to_vec()).find(|q| modules.contains_key(q));
            if let Some(t) = target {
                // A file's own module and its ancestors (their shared items, e.g. an error
                // type in a mod.rs) are not edges; everything else is.
                if !t.is_empty() && &t != m && !m.starts_with(&t) {
                    set.insert(t);
                }
            }
        }
        deps.insert(m.clone(), set);
    }
    Crate { modules, deps }
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let krate = library();
    // Tarjan-free: for each module, the set it reaches; a cycle is a module that reaches itself.
    let mut cycles = BTreeMap::new();
    for start in krate.modules.keys() {
        let mut stack: Vec<(Vec<String>, Vec<Vec<String>>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for d in krate.deps.get(&m).into_iter().flatten() {
                if d == start {
                    let mut c: Vec<String> = path.iter().map(|p| name(p)).collect();
                    c.push(name(start));
                    // One report per cycle, whichever module it starts from.
                    let mut key: Vec<String> = c[..c.len() - 1].to_vec();
                    key.sort();
                    cycles.entry(key).or_insert_with(|| c.join(" → "));
                } else if seen.insert(d.clone()) {
                    let mut p = path.clone();
                    p.push(d.clone());
                    stack.push((d.clone(), p));
                }
            }
        }
    }
    let found: Vec<String> = cycles.into_values().collect();
    assert!(found.is_empty(), "import cycles (docs/ARCHITECTURE.md, rule 1):\n  {}", found.join("\n  "));
}

#[test]
fn top_level_modules_import_only_their_layer_and_below() {
    let krate = library();
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut wrong = Vec::new();
    for (m, deps) in &krate.deps {
        let Some(top) = m.first() else { continue };
        let Some(mine) = layer(top) else {
            wrong.push(format!("{}: top-level module `{top}` is in no layer of tests/layout.rs", name(m)));
            continue;
        };
        for d in deps {
            let Some(theirs) = d.first().and_then(|t| layer(t)) else { continue };
            if theirs > mine {
                wrong.push(format!("{} (layer {mine}) imports {} (layer {theirs})", name(m), name(d)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (docs/ARCHITECTURE.md):\n  {}", wrong.join("\n  "));
}

#[test]
fn clap_and_signal_handling_live_only_in_the_binary() {
    let krate = library();
    let mut wrong = Vec::new();
    for (m, file) in &krate.modules {
        let code = code_only(&std::fs::read_to_string(file).expect("readable source"));
        // (lab::netns's rootless re-exec forwards signals to its child with `libc::signal`: that
        // is process plumbing, not the program's shutdown, and is not counted.)
        for needle in ["clap::", "tokio::signal", "signal_hook"] {
            if code.contains(needle) {
                wrong.push(format!("{} ({}) uses `{needle}`", name(m), file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "the library must leave these to src/cli/:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_checker_sees_imports() {
    // The checks above pass vacuously if the parser finds nothing: make sure it does.
    let here = vec!["web".to_string(), "files".to_string()];
    let code =
        code_only("use crate::{config::Limits, stats};\nuse super::routes::x; // crate::lab\nlet s = \"crate::mqtt\";");
    let got = imported_paths(&code, &here);
    assert!(got.contains(&vec!["config".to_string(), "Limits".to_string()]), "{got:?}");
    assert!(got.contains(&vec!["stats".to_string()]), "{got:?}");
    assert!(got.contains(&vec!["web".to_string(), "routes".to_string(), "x".to_string()]), "{got:?}");
    assert!(!got.iter().any(|p| p.first().is_some_and(|s| s == "lab" || s == "mqtt")), "{got:?}");
    let krate = library();
    assert!(krate.deps.values().map(|d| d.len()).sum::<usize>() > 20, "the crate's modules import each other");
}

#[test]
fn the_mqtt_core_cannot_reach_a_runtime_or_a_socket() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/mqtt-core/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("crates/mqtt-core/Cargo.toml");
    let deps: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "[dependencies]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split('=').next().map(str::trim))
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect();
    assert!(deps.contains(&"mqtt-proto"), "the parser read the dependency list: {deps:?}");
    for banned in ["tokio", "quinn", "socket2", "mio", "async-std", "futures", "quiclab", "rustls"] {
        assert!(!deps.iter().any(|d| d.starts_with(banned)), "mqtt-core depends on {banned}: {deps:?}");
    }
    let clippy = std::fs::read_to_string(manifest.with_file_name("clippy.toml")).expect("crates/mqtt-core/clippy.toml");
    assert!(clippy.contains("std::time::Instant::now"), "clippy.toml forbids reading the clock");
}
