//! Keys of the live view, as pure functions from a key event to an [`Action`], so they can be
//! unit-tested without a terminal.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave (q, Esc, Ctrl-C).
    Quit,
    /// Sort the function table by the next column (s), or by column N (1-5).
    SortNext,
    /// Sort by a given column.
    SortBy(usize),
    /// Freeze / unfreeze the display (p, space); sampling goes on.
    TogglePause,
    /// Show the next event-loop thread's functions (t).
    NextThread,
    /// Show all threads' functions (a).
    AllThreads,
    /// Count idle samples in the function table too (i).
    ToggleIdle,
    /// Clear the function table and the incident feed (r).
    Reset,
    /// Show or hide the key help (?).
    ToggleHelp,
}

/// The key bindings, for the help screen.
pub const HELP: &[(&str, &str)] = &[
    ("q, Esc, Ctrl-C", "quit"),
    ("s / 1-5", "sort by the next column / by column N"),
    ("p, space", "pause / resume the display"),
    ("t", "next event-loop thread"),
    ("a", "all threads"),
    ("i", "include / exclude idle samples"),
    ("r", "reset counters"),
    ("?", "show / hide this help"),
];

/// Maps a key to an action.
pub fn action(key: KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(key.code, KeyCode::Char('c')).then_some(Action::Quit);
    }
    Some(match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('s') => Action::SortNext,
        KeyCode::Char(c @ '1'..='5') => Action::SortBy(c as usize - '1' as usize),
        KeyCode::Char('p') | KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('t') => Action::NextThread,
        KeyCode::Char('a') => Action::AllThreads,
        KeyCode::Char('i') => Action::ToggleIdle,
        KeyCode::Char('r') => Action::Reset,
        KeyCode::Char('?') | KeyCode::Char('h') => Action::ToggleHelp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions() {
        assert_eq!(action(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Esc)), Some(Action::Quit));
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(key(KeyCode::Char('3'))), Some(Action::SortBy(2)));
        assert_eq!(action(key(KeyCode::Char('a'))), Some(Action::AllThreads));
        assert_eq!(action(key(KeyCode::Char('?'))), Some(Action::ToggleHelp));
        assert_eq!(action(key(KeyCode::Char('x'))), None);
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('a'), KeyModifiers::CONTROL)),
            None
        );
    }
}
