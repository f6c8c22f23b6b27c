//! What the caller has heard, tracked by the marks Twilio echoes back. Pure: the call thread
//! feeds it and acts on what it answers. (What the caller's words mean while it plays is in
//! [`super::barge_rules`].)
//!
//! Everything the call speaks — the model's sentences, fixed phrases, the greeting — is a
//! [`Piece`] with a mark sent after its last audio frame. Twilio echoes a mark when the audio
//! before it has played, and also echoes every pending mark at once when we send `clear`; so a
//! mark echoed after a `clear` proves nothing, and [`Playback::clear`] forgets the pieces it
//! cut off before their echoes come back. (The original never listened to marks: after its
//! first reply every short partial sent `clear`.)

use std::collections::VecDeque;

/// What a piece of speech is, for the history and the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The persona's greeting.
    Greeting,
    /// A sentence of the model's reply: it goes back into the conversation when heard.
    Reply,
    /// A fixed phrase (hold, apology, reprompt, goodbye).
    Phrase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub turn: u64,
    pub seq: u32,
    pub kind: Kind,
    pub text: String,
    /// Its mark has been sent (all its audio is with Twilio).
    pub marked: bool,
}

impl Piece {
    pub fn mark_name(&self) -> String {
        format!("{}-{}", self.turn, self.seq)
    }
}

/// The pieces sent or being sent, oldest first, until Twilio reports them played.
#[derive(Debug, Default)]
pub struct Playback {
    queue: VecDeque<Piece>,
    /// Marks cut off by a `clear`, whose echoes are to be ignored.
    cleared: Vec<String>,
}

impl Playback {
    /// A piece whose audio is about to be sent.
    pub fn begin(&mut self, piece: Piece) {
        self.queue.push_back(piece);
    }

    /// The piece of `turn`/`seq`, while its audio is being sent.
    pub fn piece_mut(&mut self, turn: u64, seq: u32) -> Option<&mut Piece> {
        self.queue
            .iter_mut()
            .find(|p| p.turn == turn && p.seq == seq && !p.marked)
    }

    /// Marks the end of a piece's audio; returns the mark's name to send.
    pub fn end(&mut self, turn: u64, seq: u32) -> Option<String> {
        let piece = self.piece_mut(turn, seq)?;
        piece.marked = true;
        Some(piece.mark_name())
    }

    /// Forgets a piece whose audio will never be sent (its speech could not be queued).
    pub fn forget(&mut self, turn: u64, seq: u32) {
        self.queue
            .retain(|p| !(p.turn == turn && p.seq == seq && !p.marked));
    }

    /// Twilio echoed `name`. Returns the piece if the caller heard it (it was not cleared).
    pub fn echoed(&mut self, name: &str) -> Option<Piece> {
        if let Some(pos) = self.cleared.iter().position(|c| c == name) {
            self.cleared.swap_remove(pos);
            return None;
        }
        let pos = self
            .queue
            .iter()
            .position(|p| p.marked && p.mark_name() == name)?;
        // Marks are echoed in order: anything before this one has played too.
        let mut heard: Vec<Piece> = self.queue.drain(..=pos).collect();
        heard.pop()
    }

    /// Whether assistant audio may still be playing (or about to be).
    pub fn is_speaking(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The text of every piece playing or about to, oldest first (to tell our echo from the
    /// caller's words).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.queue.iter().map(|p| p.text.as_str())
    }

    /// `clear` was sent: every piece in flight is cut off. Returns them (none was heard).
    pub fn clear(&mut self) -> Vec<Piece> {
        let cut: Vec<Piece> = self.queue.drain(..).collect();
        self.cleared
            .extend(cut.iter().filter(|p| p.marked).map(Piece::mark_name));
        // Echoes come back at once; a bounded memory of them is plenty.
        if self.cleared.len() > 256 {
            let excess = self.cleared.len() - 256;
            self.cleared.drain(..excess);
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(turn: u64, seq: u32, text: &str) -> Piece {
        Piece {
            turn,
            seq,
            kind: Kind::Reply,
            text: text.into(),
            marked: false,
        }
    }

    #[test]
    fn an_echoed_mark_means_heard_and_earlier_pieces_too() {
        let mut playback = Playback::default();
        playback.begin(piece(1, 0, "One."));
        playback.begin(piece(1, 1, "Two."));
        assert_eq!(playback.end(1, 0).as_deref(), Some("1-0"));
        assert_eq!(playback.end(1, 1).as_deref(), Some("1-1"));
        assert!(playback.is_speaking());
        assert_eq!(playback.texts().next(), Some("One."));
        let heard = playback.echoed("1-1").map(|p| p.text);
        assert_eq!(heard.as_deref(), Some("Two."));
        assert!(!playback.is_speaking());
    }

    #[test]
    fn marks_echoed_because_of_a_clear_are_not_heard() {
        let mut playback = Playback::default();
        playback.begin(piece(2, 0, "Played."));
        playback.begin(piece(2, 1, "Cut off."));
        playback.end(2, 0);
        playback.end(2, 1);
        assert_eq!(playback.echoed("2-0").map(|p| p.seq), Some(0));
        let cut = playback.clear();
        assert_eq!(cut.len(), 1);
        assert!(!playback.is_speaking());
        // Twilio echoes the cleared mark at once: it must not count as heard.
        assert_eq!(playback.echoed("2-1"), None);
        // An unknown mark is ignored.
        assert_eq!(playback.echoed("9-9"), None);
    }

    #[test]
    fn a_piece_still_being_sent_counts_as_speaking() {
        let mut playback = Playback::default();
        playback.begin(piece(3, 0, "Half sent"));
        assert!(playback.is_speaking());
        assert!(playback.piece_mut(3, 0).is_some());
        assert_eq!(playback.end(3, 5), None);
    }
}
