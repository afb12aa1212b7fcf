//! Whose code is this frame? The culprit of an incident is the innermost frame in the user's
//! own code — not the standard library, not an installed package, not asyncio's internals —
//! because that is the line a developer can change.

use crate::sample::Frame;

/// Where a frame's code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOrigin {
    /// The application's own source.
    User,
    /// Installed third-party packages (`site-packages`, `dist-packages`).
    Package,
    /// The standard library, frozen modules and the interpreter's own pseudo-files.
    Stdlib,
}

/// Classifies a source path.
pub fn origin(file: &str) -> CodeOrigin {
    if file.contains("/site-packages/") || file.contains("/dist-packages/") {
        return CodeOrigin::Package;
    }
    if file.starts_with("<frozen") || is_stdlib_path(file) {
        return CodeOrigin::Stdlib;
    }
    CodeOrigin::User
}

/// `.../lib/pythonX.Y/...` (or lib64) outside site-packages is the standard library.
fn is_stdlib_path(file: &str) -> bool {
    let mut rest = file;
    while let Some(pos) = rest.find("/python3.") {
        let before = &rest[..pos];
        let after = &rest[pos + "/python3.".len()..];
        let minor_len = after.chars().take_while(|c| c.is_ascii_digit()).count();
        if minor_len > 0
            && after[minor_len..].starts_with('/')
            && (before.ends_with("/lib") || before.ends_with("/lib64"))
        {
            return true;
        }
        rest = after;
    }
    false
}

/// Index (leaf-first) of the innermost user frame among `frames[..=root]` — the callback's own
/// frames — falling back to the whole stack, then to the root itself.
pub fn culprit_index(frames: &[Frame], root: usize) -> usize {
    let callback = &frames[..=root.min(frames.len().saturating_sub(1))];
    callback
        .iter()
        .position(|f| origin(&f.file) == CodeOrigin::User)
        .or_else(|| {
            frames
                .iter()
                .position(|f| origin(&f.file) == CodeOrigin::User)
        })
        .unwrap_or(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(
            origin("/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/events.py"),
            CodeOrigin::Stdlib
        );
        assert_eq!(
            origin("/usr/lib/python3.8/selectors.py"),
            CodeOrigin::Stdlib
        );
        assert_eq!(
            origin("/venv/lib/python3.12/site-packages/requests/api.py"),
            CodeOrigin::Package
        );
        assert_eq!(origin("<frozen importlib._bootstrap>"), CodeOrigin::Stdlib);
        assert_eq!(origin("/srv/app/handlers.py"), CodeOrigin::User);
        assert_eq!(origin("/home/me/python3.11/app.py"), CodeOrigin::User);
    }

    #[test]
    fn culprit_is_innermost_user_frame_of_the_callback() {
        let frame = |function: &str, file: &str| Frame {
            function: function.into(),
            file: file.into(),
            line: 3,
        };
        let frames = vec![
            frame("recv_into", "/py/lib/python3.11/socket.py"),
            frame("get", "/venv/lib/python3.11/site-packages/requests/api.py"),
            frame("fetch_user", "/srv/app.py"),
            frame("handler", "/srv/app.py"),
            frame("Handle._run", "/py/lib/python3.11/asyncio/events.py"),
        ];
        assert_eq!(culprit_index(&frames, 3), 2);
    }
}
