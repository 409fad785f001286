//! Live batches as the writer broadcasts them, and `Events/Subscribe` answering with each
//! live event encoded once for all subscribers.
//!
//! A committed batch goes to every subscriber and console follower
//! ([`crate::ingest::LiveBatch`]). The generated Events server would encode each event once
//! per subscriber (and the subscription would copy it first); here the first subscriber to
//! send a batch encodes all of its events into one buffer ([`LiveEvents::encoded`]) and
//! every subscriber copies its bytes into its stream. [`EventsRoutes`] serves `Subscribe`
//! with that codec ([`SharedCodec`]) and hands every other method to the generated server.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::NamedService;
use tonic::Status;
use xtrail_proto::v1::{self, events_server::EventsServer};

use crate::subscribe::{EventsService, Hub};

/// The events of one commit, in cursor order, with their encoding once a subscriber asked
/// for it.
#[derive(Debug)]
pub struct LiveEvents {
    events: Vec<v1::Event>,
    encoded: OnceLock<Encoded>,
}

/// Every event of a batch encoded back to back; `ends[i]` is where event `i` ends.
#[derive(Debug)]
struct Encoded {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl LiveEvents {
    /// A committed batch (cursors and sensor ids set).
    pub fn new(events: Vec<v1::Event>) -> Self {
        LiveEvents {
            events,
            encoded: OnceLock::new(),
        }
    }

    /// The protobuf encoding of event `i` (the batch is encoded on first use).
    pub fn encoded(&self, i: usize) -> &[u8] {
        let enc = self.encoded.get_or_init(|| {
            let size: usize = self.events.iter().map(|e| e.encoded_len()).sum();
            let mut bytes = Vec::with_capacity(size);
            let mut ends = Vec::with_capacity(self.events.len());
            for e in &self.events {
                // Encoding into a Vec cannot fail.
                let _ = e.encode(&mut bytes);
                ends.push(bytes.len());
            }
            Encoded { bytes, ends }
        });
        let start = if i == 0 { 0 } else { enc.ends[i - 1] };
        &enc.bytes[start..enc.ends[i]]
    }
}

impl std::ops::Deref for LiveEvents {
    type Target = [v1::Event];
    fn deref(&self) -> &[v1::Event] {
        &self.events
    }
}

/// One message of a subscription stream.
#[derive(Debug)]
pub enum Outgoing {
    /// Event `.1` of a live batch (its shared encoding is copied).
    Live(Arc<LiveEvents>, usize),
    /// An event read from storage.
    Stored(Box<v1::Event>),
}

/// `Subscribe`'s codec: decodes the request, writes [`Outgoing`] events.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedCodec;

/// See [`SharedCodec`].
#[derive(Debug, Default)]
pub struct OutgoingEncoder;

/// See [`SharedCodec`].
#[derive(Debug, Default)]
pub struct RequestDecoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Live(batch, i) => prost::bytes::BufMut::put_slice(dst, batch.encoded(i)),
            Outgoing::Stored(ev) => ev
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding an event: {e}")))?,
        }
        Ok(())
    }
}

impl Decoder for RequestDecoder {
    type Item = v1::SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        v1::SubscribeRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the request: {e}")))
    }
}

impl Codec for SharedCodec {
    type Encode = Outgoing;
    type Decode = v1::SubscribeRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

/// Most bytes of a decoded request (a subscription request is small).
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Most bytes of an encoded event.
const MAX_EVENT_BYTES: usize = 64 << 20;

/// The Events service: `Subscribe` through [`SharedCodec`], the rest through the
/// generated server.
#[derive(Clone)]
pub struct EventsRoutes {
    generated: EventsServer<EventsService>,
    hub: Hub,
}

impl EventsRoutes {
    /// The service over `hub`.
    pub fn new(hub: Hub) -> Self {
        EventsRoutes {
            generated: EventsServer::new(EventsService { hub: hub.clone() })
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_EVENT_BYTES),
            hub,
        }
    }
}

impl NamedService for EventsRoutes {
    const NAME: &'static str = "xtrail.v1.Events";
}

/// `Subscribe` as a server-streaming method.
struct SubscribeMethod(Hub);

impl tonic::server::ServerStreamingService<v1::SubscribeRequest> for SubscribeMethod {
    type Response = Outgoing;
    type ResponseStream = crate::subscribe::EventStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<v1::SubscribeRequest>) -> Self::Future {
        let hub = self.0.clone();
        Box::pin(async move {
            crate::subscribe::subscribe(&hub, request.get_ref()).map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for EventsRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/xtrail.v1.Events/Subscribe" {
            return self.generated.call(req);
        }
        let method = SubscribeMethod(self.hub.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SharedCodec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), Some(MAX_EVENT_BYTES));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_encoded_alone() {
        let events: Vec<v1::Event> = (1..=3)
            .map(|i| v1::Event {
                cursor: i,
                seq: i,
                trail: "x".repeat(i as usize * 50),
                ..Default::default()
            })
            .collect();
        let batch = LiveEvents::new(events.clone());
        for (i, e) in events.iter().enumerate() {
            assert_eq!(batch.encoded(i), e.encode_to_vec().as_slice());
        }
        assert_eq!(batch.len(), 3);
    }
}
