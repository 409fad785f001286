//! The README's exporter snippets are working configurations: every ```toml block of its
//! "## Exports" section goes through the collector's own configuration check.

use std::path::Path;

use xtrail_collector::config::{ServeArgs, ServerConfig};

/// The ```toml blocks between `## Exports` and the next `## ` heading.
fn export_snippets(readme: &str) -> Vec<String> {
    let start = readme.find("\n## Exports\n").expect("an Exports section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```toml" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push(block.join("\n"));
        }
    }
    out
}

#[test]
fn readme_exporter_snippets_pass_the_config_check() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("collector/README.md");
    let snippets = export_snippets(&readme);
    assert!(snippets.len() >= 5, "found {} toml blocks", snippets.len());
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for (i, s) in snippets.iter().enumerate() {
        let path = dir.path().join(format!("snippet{i}.toml"));
        std::fs::write(&path, s).unwrap();
        let cfg = ServerConfig::from_args(ServeArgs {
            config: Some(path),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        })
        .unwrap_or_else(|e| panic!("README snippet {i} is refused: {e:#}\n{s}"));
        assert!(!cfg.exporters.is_empty(), "snippet {i} has no exporter");
        for line in s.lines() {
            if let Some(k) = line.strip_prefix("kind = \"") {
                kinds.insert(k.split('"').next().unwrap_or_default().to_string());
            }
        }
    }
    let want: std::collections::BTreeSet<String> = ["file", "maltrail", "syslog", "webhook"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(kinds, want, "one snippet per exporter kind");
}
