//! Whether the engine runs rootless: the route of every forward depends on
//! it (`fwd_core::route`), and asking costs Podman a quarter of a second,
//! so it is asked once per engine socket. Over stream-local channels it is
//! asked beside the rest; over dial-stdio, where the API channel takes one
//! request at a time, once that channel is idle.

use super::io::OpId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootlessQuestion {
    /// Asked beside the rest; the answer comes under this id.
    asked: Option<OpId>,
    /// To be asked on the API channel once it is idle.
    wanted: bool,
    /// The last answer, and the socket it is about.
    known: Option<(String, bool)>,
}

/// What to do about the question once the link is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Said already, or out: nothing.
    Nothing,
    /// Known for this socket (from before, or a predecessor): no need to ask.
    Known(bool),
    /// Ask beside the rest, now.
    Beside,
}

impl RootlessQuestion {
    /// An answer a predecessor (the upgraded image) had for `socket`.
    pub fn known_for(socket: String, rootless: bool) -> Self {
        RootlessQuestion {
            known: Some((socket, rootless)),
            ..Self::default()
        }
    }

    /// The link is up on `socket`; `said`: what status already says.
    pub fn on_up(&mut self, socket: &str, said: Option<bool>, stream_local: bool) -> Ask {
        if said.is_some() || self.asked.is_some() {
            return Ask::Nothing;
        }
        if let Some((known, rootless)) = &self.known {
            if known == socket {
                return Ask::Known(*rootless);
            }
        }
        if !stream_local {
            self.wanted = true;
            return Ask::Nothing;
        }
        Ask::Beside
    }

    /// Asked beside the rest ([`Ask::Beside`]) under `id`.
    pub fn asked_as(&mut self, id: OpId) {
        self.asked = Some(id);
    }

    /// Whether `id` is the question's answer (it is then no longer awaited).
    pub fn is_answer(&mut self, id: OpId) -> bool {
        if self.asked == Some(id) {
            self.asked = None;
            return true;
        }
        false
    }

    /// The question waits for an idle API channel: ask it now (once).
    pub fn take_wanted(&mut self) -> bool {
        std::mem::take(&mut self.wanted)
    }

    /// The engine on `socket` said.
    pub fn answered(&mut self, socket: String, rootless: bool) {
        self.known = Some((socket, rootless));
    }

    /// The channels were dropped: nothing is awaited or waiting any more
    /// (what is known stays).
    pub fn forget_asks(&mut self) {
        self.asked = None;
        self.wanted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_once_per_socket_beside_the_rest_or_when_the_channel_is_idle() {
        let mut q = RootlessQuestion::default();
        assert_eq!(q.on_up("/a.sock", None, true), Ask::Beside);
        q.asked_as(7);
        assert_eq!(q.on_up("/a.sock", None, true), Ask::Nothing, "out already");
        assert!(!q.is_answer(8));
        assert!(q.is_answer(7));
        q.answered("/a.sock".into(), true);
        assert_eq!(q.on_up("/a.sock", None, true), Ask::Known(true));
        assert_eq!(q.on_up("/a.sock", Some(true), true), Ask::Nothing);
        // Another socket is another engine: asked again, on dial-stdio
        // once the channel is idle.
        assert_eq!(q.on_up("/b.sock", None, false), Ask::Nothing);
        assert!(q.take_wanted());
        assert!(!q.take_wanted(), "once");
        q.on_up("/b.sock", None, false);
        q.forget_asks();
        assert!(!q.take_wanted());
        assert_eq!(
            RootlessQuestion::known_for("/c.sock".into(), false).on_up("/c.sock", None, true),
            Ask::Known(false)
        );
    }
}
