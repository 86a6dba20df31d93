//! Text that came from the network, made fit for a log line: a client chooses request ids,
//! input names and topics, and a 16 MB id logged whole (or one with a newline that forges a
//! second log line) is an attack on the operator's disk and eyes.

use std::fmt;

/// How many characters of a client's string a log line keeps.
const KEPT_CHARS: usize = 120;

/// Displays at most [`KEPT_CHARS`] characters of `.0`, control characters escaped, and says how
/// long the whole string was when it cut.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_cut(f, self.0, self.0.len())
    }
}

/// Writes the first [`KEPT_CHARS`] characters of `text`, escaped, then the length of the whole
/// (`total` bytes) if anything was left out.
fn write_cut(f: &mut impl fmt::Write, text: &str, total: usize) -> fmt::Result {
    let mut kept = 0;
    for ch in text.chars().take(KEPT_CHARS) {
        if ch.is_control() || ch == '\\' {
            write!(f, "{}", ch.escape_default())?;
        } else {
            f.write_char(ch)?;
        }
        kept += ch.len_utf8();
    }
    if kept < total {
        write!(f, "... ({total} bytes in all)")?;
    }
    Ok(())
}

/// Bytes from the network (a topic that may not even be UTF-8), for a log line.
pub fn lossy(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4 * KEPT_CHARS)]);
    let mut shown = String::new();
    let total = if head.len() == bytes.len() { head.len() } else { bytes.len() };
    write_cut(&mut shown, &head, total).expect("writing to a String");
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_and_say_how_long_they_were() {
        let id = "x".repeat(16 << 20);
        let shown = Untrusted(&id).to_string();
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with(&format!("... ({} bytes in all)", 16 << 20)), "{shown}");
        assert_eq!(Untrusted("short-id").to_string(), "short-id");
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(Untrusted("a\nFAKE LINE\u{1b}[31m").to_string(), "a\\nFAKE LINE\\u{1b}[31m");
        assert_eq!(lossy(b"topic/\xff\n"), "topic/\u{fffd}\\n");
        assert!(lossy(&[b'a'; 70_000]).ends_with("(70000 bytes in all)"));
    }
}
