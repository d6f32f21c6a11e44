//! The `baton.toml(5)` man page, made from `docs/config.md`: one source for the web reference
//! and the installed page, so the two cannot drift. The page is written by `baton
//! generate-assets` (packaging), next to the command pages that clap_mangen makes.
//!
//! `docs/config.md` keeps to a small markdown subset that this converter knows: one `#` title,
//! `##` sections, ``### `key` `` entries, paragraphs with `code` and **bold**, `- ` bullets and
//! fenced code blocks.

/// The config reference as it is in the repository.
pub const CONFIG_REFERENCE: &str = include_str!("../docs/config.md");

/// `text` (the markdown subset) as a man page of section 5 named `name`.
pub fn config_page(text: &str, name: &str, version: &str) -> String {
    let mut out = String::new();
    let upper = name.to_uppercase();
    out.push_str(&format!(
        ".TH \"{upper}\" 5 \"\" \"baton {version}\" \"File Formats\"\n"
    ));
    let mut in_code = false;
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |out: &mut String, paragraph: &mut Vec<&str>| {
        if !paragraph.is_empty() {
            out.push_str(&inline(&paragraph.join(" ")));
            out.push('\n');
            paragraph.clear();
        }
    };
    for line in text.lines() {
        if in_code {
            if line.starts_with("```") {
                out.push_str(".fi\n.RE\n");
                in_code = false;
            } else {
                out.push_str(&escape_line(line));
                out.push('\n');
            }
            continue;
        }
        if line.starts_with("```") {
            flush(&mut out, &mut paragraph);
            out.push_str(".PP\n.RS 4\n.nf\n");
            in_code = true;
        } else if let Some(title) = line.strip_prefix("# ") {
            flush(&mut out, &mut paragraph);
            // "baton.toml — the configuration file of baton" -> NAME section.
            let what = title.split_once(" — ").map_or(title, |(_, w)| w);
            out.push_str(&format!(
                ".SH NAME\n{} \\- {}\n",
                escape(name),
                escape(what)
            ));
            out.push_str(".SH DESCRIPTION\n");
        } else if let Some(h) = line.strip_prefix("### ") {
            flush(&mut out, &mut paragraph);
            out.push_str(&format!(".SS \"{}\"\n", inline(h.trim())));
        } else if let Some(h) = line.strip_prefix("## ") {
            flush(&mut out, &mut paragraph);
            out.push_str(&format!(".SH \"{}\"\n", escape(&h.trim().to_uppercase())));
        } else if let Some(item) = line.strip_prefix("- ") {
            flush(&mut out, &mut paragraph);
            out.push_str(".IP \\(bu 2\n");
            paragraph.push(item.trim());
        } else if line.trim().is_empty() {
            flush(&mut out, &mut paragraph);
            if !out.ends_with(".PP\n") {
                out.push_str(".PP\n");
            }
        } else {
            paragraph.push(line.trim());
        }
    }
    flush(&mut out, &mut paragraph);
    out
}

/// Escape text for roff: backslashes, and what would be read as a request at a line start.
fn escape(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// A line of a code block: escaped, and its minus signs typed as such.
fn escape_line(line: &str) -> String {
    escape(line).replace('-', "\\-")
}

/// `code` and **bold** as bold; everything else escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let code = rest.find('`');
        let bold = rest.find("**");
        let (at, marker) = match (code, bold) {
            (Some(c), Some(b)) if b < c => (b, "**"),
            (Some(c), _) => (c, "`"),
            (None, Some(b)) => (b, "**"),
            (None, None) => break,
        };
        let after = &rest[at + marker.len()..];
        let Some(end) = after.find(marker) else {
            break;
        };
        out.push_str(&rest[..at].replace('\\', "\\e"));
        let inner = after[..end].replace('\\', "\\e");
        let inner = if marker == "`" {
            inner.replace('-', "\\-")
        } else {
            inner
        };
        out.push_str(&format!("\\fB{inner}\\fR"));
        rest = &after[end + marker.len()..];
    }
    out.push_str(&rest.replace('\\', "\\e"));
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_becomes_roff() {
        let md = "# baton.toml — the configuration file of baton\n\nIntro `a-b` and **bold**.\n\n## [listen]\n\n### `address`\n\nType: string. Default: none.\n\n- one\n- two\n\n```toml\n.dot = \"x\\y\"\n```\n";
        let page = config_page(md, "baton.toml", "1.0");
        assert!(page.starts_with(".TH \"BATON.TOML\" 5"), "{page}");
        assert!(page.contains(".SH NAME\nbaton.toml \\- the configuration file of baton\n"));
        assert!(
            page.contains("Intro \\fBa\\-b\\fR and \\fBbold\\fR."),
            "{page}"
        );
        assert!(page.contains(".SH \"[LISTEN]\"\n"));
        assert!(page.contains(".SS \"\\fBaddress\\fR\"\n"));
        assert!(
            page.contains(".IP \\(bu 2\none\n.IP \\(bu 2\ntwo\n"),
            "{page}"
        );
        assert!(page.contains(".nf\n\\&.dot = \"x\\ey\"\n.fi\n"), "{page}");
    }

    #[test]
    fn the_config_reference_converts_whole() {
        let page = config_page(CONFIG_REFERENCE, "baton.toml", "0");
        for leftover in ["```", "**", "\n## ", "\n### "] {
            assert!(!page.contains(leftover), "{leftover:?} left in the page");
        }
        let keys = CONFIG_REFERENCE
            .lines()
            .filter(|l| l.starts_with("### "))
            .count();
        assert_eq!(page.matches("\n.SS ").count(), keys);
        assert!(keys > 40, "{keys} keys");
    }

    /// Every key the reference documents is one the parser takes, with the default it names
    /// where that is a plain value: a renamed or removed key fails here.
    #[test]
    fn every_documented_key_is_a_key_of_the_config() {
        let mut section = String::new();
        let mut checked = 0;
        for line in CONFIG_REFERENCE.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                section = h
                    .trim()
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or("")
                    .to_owned();
                continue;
            }
            let Some(key) = line.strip_prefix("### `").and_then(|k| k.strip_suffix('`')) else {
                continue;
            };
            // An unknown key is an error that names it; a known key with a wrong value is an
            // error about its value.
            let value = "[\"probe-not-a-value\", 0]";
            let text = if section.is_empty() {
                format!("{key} = {value}\n[app]\ncommand = [\"x\"]\n")
            } else {
                format!("name = \"t\"\n[app]\ncommand = [\"x\"]\n[{section}]\n{key} = {value}\n")
            };
            let text = text.replace("[app]\ncommand = [\"x\"]\n[app]\n", "[app]\n");
            let err = crate::config::Config::parse(&text, "t.toml".as_ref())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !err.contains("unknown field"),
                "[{section}] {key} is documented but not a key: {err}"
            );
            checked += 1;
        }
        assert!(checked > 40);
    }

    #[test]
    fn the_example_in_the_reference_is_a_valid_config() {
        let example = CONFIG_REFERENCE
            .split("## Example")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("an example block");
        crate::config::Config::parse(example, "example.toml".as_ref())
            .unwrap_or_else(|e| panic!("the documented example does not parse: {e}"));
    }
}
