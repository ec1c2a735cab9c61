//! Stop-string matching on streamed text ([`StopMatcher`]).

/// Finds stop strings in streamed text. Text that could be the start of a stop string is held
/// back until it is known not to be; at a stop string the text is cut (the stop string itself
/// is not emitted) and the matcher reports `stopped`.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stop_strings: Vec<String>) -> Self {
        StopMatcher {
            stops: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Feeds a text delta; returns the text that is safe to emit and whether a stop string was
    /// reached (after which every push returns `("", true)`).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(delta);
        // The earliest stop string occurrence.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold_from].to_string();
        self.pending.drain(..hold_from);
        (out, false)
    }

    /// Ends the stream: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Whether a stop string was reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The stop strings.
    pub fn stop_strings(&self) -> &[String] {
        &self.stops
    }
}
