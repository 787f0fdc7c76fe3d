//! A map of the replicated state that remembers which keys `apply` changed.
//!
//! The store writes only the objects a command changed (one sled key each), so every
//! collection that can grow large keeps a dirty set next to its data. Reads go through
//! `Deref` to the persistent map; writes only through the methods here, so a change that
//! forgets to mark its key cannot compile. The map is `imbl`'s `OrdMap`: cloning the state
//! to publish it to readers shares structure instead of copying every object.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::ops::Deref;

use imbl::OrdMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug)]
pub struct Tracked<K: Ord + Clone, V: Clone> {
    map: OrdMap<K, V>,
    /// Keys inserted, changed or removed since the store last took them.
    dirty: BTreeSet<K>,
}

impl<K: Ord + Clone, V: Clone> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: OrdMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Deref for Tracked<K, V> {
    type Target = OrdMap<K, V>;
    fn deref(&self) -> &OrdMap<K, V> {
        &self.map
    }
}

/// Equal when the data is: what is still to be written is bookkeeping, not state.
impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for Tracked<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + Clone, V: Clone + Eq> Eq for Tracked<K, V> {}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Tracked<K, V> {
    /// A loaded map: nothing in it is waiting to be written.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Tracked {
            map: iter.into_iter().collect(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Tracked<K, V> {
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.map.insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (key, old) = self.map.remove_with_key(key)?;
        self.dirty.insert(key);
        Some(old)
    }

    /// Marks `key` changed (if present) and lends it out for changing.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (k, _) = self.map.get_key_value(key)?;
        self.dirty.insert(k.clone());
        self.map.get_mut(key)
    }

    /// The keys changed since the last call, for the store to write or delete.
    pub fn take_dirty(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.dirty)
    }
}

impl<K: Ord + Clone + Serialize, V: Clone + Serialize> Serialize for Tracked<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, K: Ord + Clone + Deserialize<'de>, V: Clone + Deserialize<'de>> Deserialize<'de> for Tracked<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tracked {
            map: OrdMap::deserialize(d)?,
            dirty: BTreeSet::new(),
        })
    }
}
