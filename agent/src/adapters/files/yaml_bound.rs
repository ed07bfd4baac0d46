//! The one bound on what a YAML document may build in memory, for every YAML file the agent reads
//! (the manifests, the credential-provider config): a counting [`serde::de::DeserializeSeed`] that
//! builds a [`serde_yaml::Value`] and stops once the document passes its bound, so that YAML
//! aliases cannot blow a small file up.

use serde::de::DeserializeSeed as _;

/// How much one document may build in memory, aliases expanded: every scalar's bytes plus one
/// [`serde_yaml::Value`] per node. serde_yaml 0.9 replays an anchored node for every `*alias` and
/// caps only the number of replays (100 per event of the document), not their size, so a 1 MiB
/// anchored scalar referenced 1,000 times would build 1 GiB from a 1 MiB file. The expansion is
/// counted while the value is built and the document is refused as soon as it passes the bound,
/// so no more than about this much is ever allocated for it. A Kubernetes object is at most
/// 1.5 MiB, so no real object comes near.
pub const MAX_DOCUMENT_EXPANDED_BYTES: u64 = 16 * 1024 * 1024;

/// How much all the documents of one file may build, counted as for
/// [`MAX_DOCUMENT_EXPANDED_BYTES`]: many small documents each just under the document bound
/// cannot add up to an unbounded amount of work. Past it, the rest of the file is skipped.
pub const MAX_FILE_EXPANDED_BYTES: u64 = 64 * 1024 * 1024;

/// What one document has built so far, against its bound.
pub struct Expansion {
    used: u64,
    limit: u64,
    exceeded: bool,
}

impl Expansion {
    /// Nothing built yet; at most `limit` bytes (scalars plus nodes) may be.
    pub fn new(limit: u64) -> Self {
        Self {
            used: 0,
            limit,
            exceeded: false,
        }
    }

    /// Builds one document's value, refusing it as soon as it passes the bound (then
    /// [`exceeded`](Self::exceeded) is true and the error says only that).
    pub fn value(
        &mut self,
        document: serde_yaml::Deserializer<'_>,
    ) -> Result<serde_yaml::Value, serde_yaml::Error> {
        Bounded(self).deserialize(document)
    }

    /// What the document built, counted as the bound counts it.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The document passed its bound (and was not built).
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// Counts one node holding `bytes` of scalar text, before it is allocated.
    fn charge<E: serde::de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        const NODE: u64 = std::mem::size_of::<serde_yaml::Value>() as u64;
        self.used = self.used.saturating_add(NODE + bytes as u64);
        if self.used > self.limit {
            self.exceeded = true;
            return Err(E::custom("the document expands past its size bound"));
        }
        Ok(())
    }
}

/// Builds a [`serde_yaml::Value`] as serde_yaml's own `Deserialize` does (tags kept, duplicate
/// keys refused), charging every node to an [`Expansion`] first.
struct Bounded<'a>(&'a mut Expansion);

impl<'de> serde::de::DeserializeSeed<'de> for Bounded<'_> {
    type Value = serde_yaml::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Bounded<'_> {
    type Value = serde_yaml::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
        self.0.charge(0)?;
        Ok(serde_yaml::Value::Bool(b))
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<Self::Value, E> {
        self.0.charge(0)?;
        Ok(serde_yaml::Value::Number(i.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Self::Value, E> {
        self.0.charge(0)?;
        Ok(serde_yaml::Value::Number(u.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Self::Value, E> {
        self.0.charge(0)?;
        Ok(serde_yaml::Value::Number(f.into()))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        self.0.charge(s.len())?;
        Ok(serde_yaml::Value::String(s.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
        self.0.charge(s.len())?;
        Ok(serde_yaml::Value::String(s))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.charge(0)?;
        Ok(serde_yaml::Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.0.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Bounded(&mut *self.0))? {
            items.push(item);
        }
        Ok(serde_yaml::Value::Sequence(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.0.charge(0)?;
        let mut mapping = serde_yaml::Mapping::new();
        while let Some(key) = map.next_key_seed(Bounded(&mut *self.0))? {
            if mapping.contains_key(&key) {
                let message = match &key {
                    serde_yaml::Value::String(k) => format!("duplicate entry with key {k:?}"),
                    _ => "duplicate entry in YAML map".to_string(),
                };
                return Err(serde::de::Error::custom(message));
            }
            let value = map.next_value_seed(Bounded(&mut *self.0))?;
            mapping.insert(key, value);
        }
        Ok(serde_yaml::Value::Mapping(mapping))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        use serde::de::VariantAccess as _;
        self.0.charge(0)?;
        let (tag, contents): (String, _) = data.variant()?;
        if tag.is_empty() {
            return Err(serde::de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(Bounded(&mut *self.0))?;
        Ok(serde_yaml::Value::Tagged(Box::new(
            serde_yaml::value::TaggedValue {
                tag: serde_yaml::value::Tag::new(tag),
                value,
            },
        )))
    }
}
