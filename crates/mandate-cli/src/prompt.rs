//! Reading a secret from the operator's terminal without showing it.

use std::io::Read as _;

use rustix::termios::{
    LocalModes, OptionalActions, SpecialCodeIndex, Termios, tcgetattr, tcsetattr,
};

use crate::client::CliError;

/// Puts the terminal's settings back when dropped (also on an error).
struct Restore(Termios);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Flush, &self.0);
    }
}

/// Reads one line from the terminal on standard input with echo off, byte
/// by byte (no canonical mode, no signals: Ctrl-C cancels here, so the
/// terminal is always given back its settings). Backspace erases; Enter
/// ends; Ctrl-C or Ctrl-D on an empty line cancels.
pub(crate) fn secret_line(prompt: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)
        .map_err(|e| CliError::new(format!("cannot read the terminal's settings: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_modes &= !(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG);
    quiet.special_codes[SpecialCodeIndex::VMIN] = 1;
    quiet.special_codes[SpecialCodeIndex::VTIME] = 0;
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| CliError::new(format!("cannot turn the terminal's echo off: {e}")))?;
    let _restore = Restore(saved);
    eprintln!("{prompt}");
    let mut line = Line::default();
    let mut byte = [0u8; 1];
    let mut input = stdin.lock();
    loop {
        let n = input
            .read(&mut byte)
            .map_err(|e| CliError::new(format!("cannot read the terminal: {e}")))?;
        let b = if n == 0 { None } else { Some(byte[0]) };
        match line.key(b) {
            Key::More => {}
            Key::Done => break,
            Key::Cancel => return Err(CliError::new("cancelled: no secret was stored")),
        }
    }
    String::from_utf8(line.0).map_err(|_| CliError::new("the secret is not UTF-8 text"))
}

/// A line being typed.
#[derive(Default)]
struct Line(Vec<u8>);

/// What a key (or the end of input, `None`) does to the line.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    More,
    Done,
    Cancel,
}

impl Line {
    fn key(&mut self, b: Option<u8>) -> Key {
        match b {
            None | Some(0x04) if self.0.is_empty() => Key::Cancel,
            None | Some(b'\n' | b'\r' | 0x04) => Key::Done,
            Some(0x03) => Key::Cancel,
            Some(0x7f | 0x08) => {
                // Erase one character (every byte of its UTF-8 sequence).
                while let Some(b) = self.0.pop() {
                    if b & 0xC0 != 0x80 {
                        break;
                    }
                }
                Key::More
            }
            Some(b) => {
                self.0.push(b);
                Key::More
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &[u8]) -> (Vec<u8>, Key) {
        let mut l = Line::default();
        for k in keys {
            match l.key(Some(*k)) {
                Key::More => {}
                end => return (l.0, end),
            }
        }
        let end = l.key(None);
        (l.0, end)
    }

    #[test]
    fn a_typed_line_is_edited_and_ends_or_is_cancelled() {
        assert_eq!(typed(b"abcX\x7fd\r"), (b"abcd".to_vec(), Key::Done));
        assert_eq!(
            typed("ké\x7f\x7fx\n".as_bytes()),
            (b"x".to_vec(), Key::Done)
        );
        assert_eq!(typed(b"abc\x03"), (b"abc".to_vec(), Key::Cancel));
        assert_eq!(typed(b"\x04").1, Key::Cancel);
        assert_eq!(typed(b"").1, Key::Cancel);
        assert_eq!(typed(b"abc").1, Key::Done);
        assert_eq!(typed(b"\x7f\x7fa\n"), (b"a".to_vec(), Key::Done));
    }
}
