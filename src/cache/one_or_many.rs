//! A list that keeps a single item inline.
//!
//! Most reads name one key, and every `Vec` a read builds is an allocation and a free on
//! the client's hot path (a remote read built five of them for one key). A list collected
//! from one item stays on the stack; two or more go to a `Vec` as before.

use std::ops::{Deref, DerefMut};

/// One item inline, or any number in a `Vec`; used as a slice.
#[derive(Debug)]
pub enum OneOrMany<T> {
    /// Exactly one item, without an allocation.
    One([T; 1]),
    /// Zero, two or more items.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// A list of exactly `item`.
    pub fn one(item: T) -> Self {
        OneOrMany::One([item])
    }
}

impl<T> FromIterator<T> for OneOrMany<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut items = iter.into_iter();
        let Some(first) = items.next() else {
            return OneOrMany::Many(Vec::new());
        };
        let Some(second) = items.next() else {
            return OneOrMany::One([first]);
        };
        let mut all = Vec::with_capacity(2 + items.size_hint().0);
        all.push(first);
        all.push(second);
        all.extend(items);
        OneOrMany::Many(all)
    }
}

impl<T> Deref for OneOrMany<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            OneOrMany::One(one) => one,
            OneOrMany::Many(many) => many,
        }
    }
}

impl<T> DerefMut for OneOrMany<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            OneOrMany::One(one) => one,
            OneOrMany::Many(many) => many,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_keep_order_and_only_one_item_stays_inline() {
        for n in 0..5usize {
            let list: OneOrMany<usize> = (0..n).collect();
            assert_eq!(&*list, (0..n).collect::<Vec<_>>().as_slice());
            assert_eq!(matches!(list, OneOrMany::One(_)), n == 1, "{n} items");
        }
        let mut one = OneOrMany::one(String::from("a"));
        one[0].push('b');
        assert_eq!(&*one, ["ab".to_string()]);
    }
}
