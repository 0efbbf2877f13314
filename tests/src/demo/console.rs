//! Where the demo writes. On a terminal: colours, and a live panel at the bottom that is redrawn
//! in place while the lines above it scroll. Anywhere else (a pipe, a CI log, a test): the same
//! lines as plain text, no escape codes, no panel.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

/// ANSI: move to the start of the line `n` lines up (`\x1b[{n}F`), then clear to the end of the
/// screen.
fn erase_up(lines: usize) -> String {
    format!("\x1b[{lines}F\x1b[J")
}

/// How many columns `text` takes on a terminal: its characters without the escape sequences
/// [`Paint`] adds.
pub fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, _) => len += 1,
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    len
}

/// Splits `text` into lines of at most `width` columns at spaces (a longer word gets a line of
/// its own); the first line starts with `first`, the others with `rest`. Painted text keeps its
/// colours.
pub fn wrap(text: &str, width: usize, first: &str, rest: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let fits = visible_len(&line) + 1 + visible_len(word) <= width;
        if !empty && !fits {
            lines.push(std::mem::replace(&mut line, rest.to_string()));
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    lines.push(line);
    lines
}

/// Colours and emphasis, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Paint only if `on`.
    pub fn new(on: bool) -> Paint {
        Paint { on }
    }

    fn wrap(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Bold.
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// Dimmed, for what matters less.
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }

    /// Green: passed, healthy.
    pub fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }

    /// Red: failed.
    pub fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }

    /// Yellow: inconclusive, waiting.
    pub fn yellow(self, text: &str) -> String {
        self.wrap("33", text)
    }

    /// Cyan: the canary.
    pub fn cyan(self, text: &str) -> String {
        self.wrap("36", text)
    }
}

/// Lines wrap at this width, or at the terminal's if it is narrower.
pub const MAX_WIDTH: usize = 100;
/// The live panel needs this many columns; on a narrower terminal it is left out.
pub const PANEL_COLUMNS: usize = 80;

/// The demo's output.
pub struct Console {
    out: Box<dyn Write + Send>,
    live: bool,
    paint: Paint,
    width: usize,
    panel: Vec<String>,
    drawn: usize,
}

/// The terminal's width: `COLUMNS`, else what `stty size` says about the controlling terminal.
fn terminal_columns() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(columns);
    }
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    // "ROWS COLUMNS"
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

impl Console {
    /// Standard output. On a terminal: colours (unless `NO_COLOR` is set), lines wrapped to its
    /// width, and the live panel if it is at least 80 columns wide (and not `TERM=dumb`).
    /// Anywhere else: plain lines.
    pub fn stdout() -> Console {
        let terminal = std::io::stdout().is_terminal()
            && std::env::var("TERM").map_or(true, |term| term != "dumb");
        let color = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let columns = if terminal {
            terminal_columns().unwrap_or(MAX_WIDTH)
        } else {
            MAX_WIDTH
        };
        let mut console = Console::new(
            Box::new(std::io::stdout()),
            terminal && columns >= PANEL_COLUMNS,
            color,
        );
        console.width = columns.clamp(40, MAX_WIDTH);
        console
    }

    /// Output to `out`; `live` draws the panel, `color` paints. Lines wrap at [`MAX_WIDTH`].
    pub fn new(out: Box<dyn Write + Send>, live: bool, color: bool) -> Console {
        Console {
            out,
            live,
            paint: Paint::new(color),
            width: MAX_WIDTH,
            panel: Vec::new(),
            drawn: 0,
        }
    }

    /// Where long lines wrap.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Plain output kept in memory, for tests.
    pub fn transcript() -> (Console, Transcript) {
        let transcript = Transcript::default();
        let console = Console::new(Box::new(transcript.clone()), false, false);
        (console, transcript)
    }

    /// How to paint text for this console.
    pub fn paint(&self) -> Paint {
        self.paint
    }

    /// Whether the panel is drawn (a terminal).
    pub fn live(&self) -> bool {
        self.live
    }

    /// Writes a line above the panel.
    pub fn line(&mut self, text: impl AsRef<str>) {
        let mut buffer = self.erase();
        buffer.push_str(text.as_ref());
        buffer.push('\n');
        buffer.push_str(&self.draw());
        self.write(&buffer);
    }

    /// `text` wrapped to the width, the first line after `first`, the others after `rest`.
    pub fn para(&mut self, first: &str, rest: &str, text: &str) {
        for line in wrap(text, self.width, first, rest) {
            self.line(line);
        }
    }

    /// An empty line.
    pub fn blank(&mut self) {
        self.line("");
    }

    /// Replaces the panel (only shown on a terminal). Its lines must fit the terminal's width:
    /// a wrapped line would throw off the redraw.
    pub fn set_panel(&mut self, lines: Vec<String>) {
        if !self.live {
            return;
        }
        let mut buffer = self.erase();
        self.panel = lines;
        buffer.push_str(&self.draw());
        self.write(&buffer);
    }

    /// Removes the panel.
    pub fn clear_panel(&mut self) {
        self.set_panel(Vec::new());
    }

    fn erase(&mut self) -> String {
        let lines = std::mem::take(&mut self.drawn);
        match lines {
            0 => String::new(),
            n => erase_up(n),
        }
    }

    fn draw(&mut self) -> String {
        self.drawn = self.panel.len();
        self.panel.iter().map(|line| format!("{line}\n")).collect()
    }

    fn write(&mut self, text: &str) {
        // A closed stdout (`| head`) must not stop the demo; there is nowhere to report it.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.clear_panel();
    }
}

/// What a [`Console::transcript`] received.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<Vec<u8>>>);

impl Transcript {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Transcript {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_console() -> (Console, Transcript) {
        let transcript = Transcript::default();
        (
            Console::new(Box::new(transcript.clone()), true, true),
            transcript,
        )
    }

    #[test]
    fn wrapping_keeps_words_and_indents() {
        assert_eq!(
            wrap("one two three four", 12, "> ", "  "),
            vec!["> one two", "  three four"]
        );
        assert_eq!(wrap("", 10, "> ", "  "), vec!["> "]);
        let green = Paint::new(true).green("✓");
        assert_eq!(visible_len(&green), 1);
        assert_eq!(
            wrap(&format!("{green} passed at 5%"), 12, "  ", "    "),
            vec![format!("  {green} passed"), "    at 5%".to_string()]
        );
        assert_eq!(
            wrap("averyveryverylongword x", 8, "", ""),
            vec!["averyveryverylongword", "x"]
        );
    }

    #[test]
    fn plain_output_has_no_escape_codes_and_no_panel() {
        let (mut console, transcript) = Console::transcript();
        let p = console.paint();
        console.line(p.green("✓ passed"));
        console.set_panel(vec!["panel".into()]);
        console.line("after");
        drop(console);
        assert_eq!(transcript.text(), "✓ passed\nafter\n");
    }

    #[test]
    fn on_a_terminal_the_panel_is_redrawn_below_new_lines() {
        let (mut console, transcript) = live_console();
        console.set_panel(vec!["a".into(), "b".into()]);
        console.line("event");
        console.set_panel(vec!["c".into()]);
        console.clear_panel();
        let expected = [
            "a\nb\n",
            "\x1b[2F\x1b[Jevent\na\nb\n",
            "\x1b[2F\x1b[Jc\n",
            "\x1b[1F\x1b[J",
        ]
        .concat();
        assert_eq!(transcript.text(), expected);
    }
}
