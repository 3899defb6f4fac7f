//! CBOR decoding for the log and snapshots: a fast reader over a byte slice for the shapes
//! ciborium writes, with ciborium itself as the authority.
//!
//! Recovery decodes every log entry since the last snapshot, and ciborium spent most of that
//! time reading through its `Read` seam a byte at a time, copying every map key into a
//! scratch buffer (and zeroing a 4 KiB one per value). [`FastDeserializer`] reads the slice
//! in place and makes exactly the visitor calls ciborium's deserializer makes, for a
//! subset: definite lengths, no tags, no floats, no big integers. Anything outside it —
//! and any error at all, the visitor's included — is decoded again by ciborium, whose
//! answer (value or error) is the one returned. So the fast path can only ever return a
//! value ciborium returns for the same bytes; `fast_decoding_agrees_with_ciborium` checks it.

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

/// ciborium's scratch buffer size: strings and byte strings up to it go through
/// `visit_str`/`visit_bytes`, longer ones through `visit_string`/`visit_byte_buf`.
const SCRATCH_LEN: usize = 4096;
/// ciborium's recursion limit.
const RECURSION_LIMIT: usize = 256;

/// Why bytes did not decode as one CBOR value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CborError {
    /// ciborium's message.
    Malformed(String),
    /// A whole value, followed by this many more bytes.
    TrailingBytes(usize),
}

/// Decodes one CBOR value of `T` and refuses trailing bytes.
pub(crate) fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, CborError> {
    if let Ok(value) = decode_fast(body) {
        return Ok(value);
    }
    decode_ciborium(body)
}

/// The authoritative (and slow) path: ciborium, then the trailing-bytes check.
pub(crate) fn decode_ciborium<T: DeserializeOwned>(body: &[u8]) -> Result<T, CborError> {
    let mut reader = body;
    let value =
        ciborium::from_reader(&mut reader).map_err(|e| CborError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CborError::TrailingBytes(reader.len()));
    }
    Ok(value)
}

/// The fast path alone (`Err` means only "ask ciborium").
pub(crate) fn decode_fast<T: DeserializeOwned>(body: &[u8]) -> Result<T, Unsupported> {
    let mut de = FastDeserializer {
        input: body,
        pos: 0,
        recurse: RECURSION_LIMIT,
    };
    let value = T::deserialize(&mut de)?;
    if de.pos != body.len() {
        return Err(Unsupported);
    }
    Ok(value)
}

/// The fast path gave up: malformed input, a shape it leaves to ciborium, or a visitor error.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not decoded by the fast path")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Unsupported
    }
}

/// A CBOR item header, as far as the fast path handles it.
#[derive(Debug, Clone, Copy)]
enum Header {
    Positive(u64),
    Negative(u64),
    Bytes(usize),
    Text(usize),
    Array(usize),
    Map(usize),
    False,
    True,
    /// `null` or `undefined` (ciborium treats them alike).
    Null,
}

struct FastDeserializer<'a> {
    input: &'a [u8],
    pos: usize,
    recurse: usize,
}

impl<'a> FastDeserializer<'a> {
    /// The header at the current position and its length in bytes; does not advance.
    /// Tags, floats, other simple values, breaks and indefinite lengths are unsupported.
    #[inline]
    fn peek(&self) -> Result<(Header, usize), Unsupported> {
        let first = *self.input.get(self.pos).ok_or(Unsupported)?;
        let major = first >> 5;
        let info = first & 0x1f;
        let (arg, len) = match info {
            0..=23 => (u64::from(info), 1),
            24 => (
                u64::from(*self.input.get(self.pos + 1).ok_or(Unsupported)?),
                2,
            ),
            25 => (self.be(2)?, 3),
            26 => (self.be(4)?, 5),
            27 => (self.be(8)?, 9),
            _ => return Err(Unsupported),
        };
        let size = |arg: u64| usize::try_from(arg).map_err(|_| Unsupported);
        let header = match major {
            0 => Header::Positive(arg),
            1 => Header::Negative(arg),
            2 => Header::Bytes(size(arg)?),
            3 => Header::Text(size(arg)?),
            4 => Header::Array(size(arg)?),
            5 => Header::Map(size(arg)?),
            // Major 7 with info <= 24 is a simple value; 25..=27 are floats.
            7 if info <= 24 => match arg {
                20 => Header::False,
                21 => Header::True,
                22 | 23 => Header::Null,
                _ => return Err(Unsupported),
            },
            _ => return Err(Unsupported),
        };
        Ok((header, len))
    }

    /// The `n`-byte big-endian argument after the initial byte.
    #[inline]
    fn be(&self, n: usize) -> Result<u64, Unsupported> {
        let bytes = self
            .input
            .get(self.pos + 1..self.pos + 1 + n)
            .ok_or(Unsupported)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    #[inline]
    fn pull(&mut self) -> Result<Header, Unsupported> {
        let (header, len) = self.peek()?;
        self.pos += len;
        Ok(header)
    }

    /// The next `len` bytes of content.
    #[inline]
    fn take(&mut self, len: usize) -> Result<&'a [u8], Unsupported> {
        let end = self.pos.checked_add(len).ok_or(Unsupported)?;
        let bytes = self.input.get(self.pos..end).ok_or(Unsupported)?;
        self.pos = end;
        Ok(bytes)
    }

    #[inline]
    fn text(&mut self, len: usize) -> Result<&'a str, Unsupported> {
        std::str::from_utf8(self.take(len)?).map_err(|_| Unsupported)
    }

    fn recurse<V>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<V, Unsupported>,
    ) -> Result<V, Unsupported> {
        if self.recurse == 0 {
            return Err(Unsupported);
        }
        self.recurse -= 1;
        let result = f(self);
        self.recurse += 1;
        result
    }
}

impl<'de, 'a> de::Deserializer<'de> for &mut FastDeserializer<'a> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.peek()?.0 {
            Header::Positive(_) => self.deserialize_u64(visitor),
            Header::Negative(_) => self.deserialize_i64(visitor),
            Header::Bytes(len) if len <= SCRATCH_LEN => self.deserialize_bytes(visitor),
            Header::Bytes(_) => self.deserialize_byte_buf(visitor),
            Header::Text(len) if len <= SCRATCH_LEN => self.deserialize_str(visitor),
            Header::Text(_) => self.deserialize_string(visitor),
            Header::Array(_) => self.deserialize_seq(visitor),
            Header::Map(_) => self.deserialize_map(visitor),
            Header::False | Header::True => self.deserialize_bool(visitor),
            Header::Null => self.deserialize_option(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::False => visitor.visit_bool(false),
            Header::True => visitor.visit_bool(true),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        let value = match self.pull()? {
            Header::Positive(x) => i64::try_from(x).map_err(|_| Unsupported)?,
            // CBOR's negative integer n stands for -1 - n.
            Header::Negative(x) => i64::try_from(x).map_err(|_| Unsupported)? ^ !0,
            _ => return Err(Unsupported),
        };
        visitor.visit_i64(value)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Positive(x) => visitor.visit_u64(x),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Text(len) if len <= SCRATCH_LEN => visitor.visit_str(self.text(len)?),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Text(len) => visitor.visit_string(self.text(len)?.to_owned()),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Bytes(len) if len <= SCRATCH_LEN => visitor.visit_bytes(self.take(len)?),
            Header::Array(len) => self.recurse(|me| visitor.visit_seq(Access(me, len))),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Bytes(len) => visitor.visit_byte_buf(self.take(len)?.to_vec()),
            Header::Array(len) => self.recurse(|me| visitor.visit_seq(Access(me, len))),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.peek()? {
            (Header::Null, len) => {
                self.pos += len;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Null => visitor.visit_unit(),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        // ciborium also reads a byte string as a sequence of u8; left to it.
        match self.pull()? {
            Header::Array(len) => self.recurse(|me| visitor.visit_seq(Access(me, len))),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Map(len) => self.recurse(|me| visitor.visit_map(Access(me, len))),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        // ciborium's tag-capturing pseudo-enum is left to ciborium.
        if name == "@@TAG@@" {
            return Err(Unsupported);
        }
        // A unit variant is its name; any other is a one-entry map { name: value }. As in
        // ciborium, the map header is consumed and the name is read as the variant.
        match self.peek()? {
            (Header::Map(1), len) => self.pos += len,
            (Header::Text(_), _) => {}
            _ => return Err(Unsupported),
        }
        self.recurse(|me| visitor.visit_enum(Access(me, 0)))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.pull()? {
            Header::Text(len) if len <= SCRATCH_LEN => visitor.visit_str(self.text(len)?),
            Header::Bytes(len) if len <= SCRATCH_LEN => visitor.visit_bytes(self.take(len)?),
            _ => Err(Unsupported),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        self.deserialize_any(visitor)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A definite-length array or map (the `usize` counts the items left), or an enum's variant
/// access (as ciborium's `Access`).
struct Access<'r, 'a>(&'r mut FastDeserializer<'a>, usize);

impl<'de> de::SeqAccess<'de> for Access<'_, '_> {
    type Error = Unsupported;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unsupported> {
        if self.1 == 0 {
            return Ok(None);
        }
        self.1 -= 1;
        seed.deserialize(&mut *self.0).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.1)
    }
}

impl<'de> de::MapAccess<'de> for Access<'_, '_> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unsupported> {
        if self.1 == 0 {
            return Ok(None);
        }
        self.1 -= 1;
        seed.deserialize(&mut *self.0).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Unsupported> {
        seed.deserialize(&mut *self.0)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.1)
    }
}

impl<'de> de::EnumAccess<'de> for Access<'_, '_> {
    type Error = Unsupported;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), Unsupported> {
        let variant = seed.deserialize(&mut *self.0)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Access<'_, '_> {
    type Error = Unsupported;

    fn unit_variant(self) -> Result<(), Unsupported> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Unsupported> {
        seed.deserialize(&mut *self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        de::Deserializer::deserialize_any(&mut *self.0, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        de::Deserializer::deserialize_any(&mut *self.0, visitor)
    }
}

#[cfg(test)]
mod tests;
