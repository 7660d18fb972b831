//! The protobuf codec of the lavic services: tonic-prost's, except that a request that is not
//! valid protobuf (truncated, a wrong wire type, a string field that is not UTF-8) is the
//! caller's error, INVALID_ARGUMENT, not INTERNAL (which our README reserves for our own bugs
//! and says to retry). Named in `build.rs` (`codec_path`), so every generated client and server
//! of `lavic.v1` uses it.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// tonic-prost's codec with parse errors answered INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct LavicCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LavicCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for LavicCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LavicDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LavicDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// Decodes `U`; a message that does not parse is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct LavicDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for LavicDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            // The only error prost decoding gives.
            Code::Internal => Status::invalid_argument(format!(
                "the message is not a valid {}: {}",
                short_type_name::<U>(),
                s.message()
            )),
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}
