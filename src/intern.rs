//! One copy of each text that many long-lived records hold: the objects of
//! a DBQR carry the same labels, owner references and field set, and at
//! 10,000 objects their copies were a third of the watch cache.

use std::collections::HashSet;
use std::sync::Arc;

/// A set of shared texts. A text no record holds any more is let go at the
/// next sweep, which runs once the set has grown to twice what the last
/// one left: the set stays within about twice what is in use.
#[derive(Debug, Default)]
pub struct Interner {
    texts: HashSet<Arc<str>>,
    /// How many texts the last sweep left.
    swept: usize,
}

impl Interner {
    /// Makes `text` the shared copy of its content.
    pub fn share(&mut self, text: &mut Arc<str>) {
        match self.texts.get(text) {
            Some(shared) => *text = shared.clone(),
            None => {
                self.texts.insert(text.clone());
                if self.texts.len() > 2 * self.swept + 64 {
                    self.texts.retain(|t| Arc::strong_count(t) > 1);
                    self.swept = self.texts.len();
                }
            }
        }
    }

    /// The shared copy of `text`.
    pub fn get(&mut self, text: &str) -> Arc<str> {
        let mut text = Arc::from(text);
        self.share(&mut text);
        text
    }

    /// How many texts the set holds.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_copy_and_unused_ones_go() {
        let mut texts = Interner::default();
        let a = texts.get("labels");
        let b = texts.get("labels");
        assert!(Arc::ptr_eq(&a, &b));
        // A thousand texts held one at a time: the set stays small.
        let mut held = texts.get("0");
        for n in 1..1000 {
            held = texts.get(&n.to_string());
        }
        assert_eq!(&*held, "999");
        assert!(texts.len() < 200, "{} texts kept", texts.len());
        assert!(Arc::ptr_eq(&a, &texts.get("labels")), "a text in use stays");
    }
}
