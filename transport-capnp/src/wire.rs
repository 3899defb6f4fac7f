//! The server's Cap'n Proto vat network: capnp-rpc's two-party network, except that the
//! limits applied to each incoming message are read when its frame header arrives, so a
//! connection reads under the tight pre-login limits until its login succeeds and under the
//! normal ones afterwards.
//!
//! capnp-futures allocates the whole message announced by a frame header before reading its
//! body, so the size limit must be the one in force *before* login: with only the normal
//! 64 MiB limit, 16 unauthenticated connections announcing 64 MiB each took a node from
//! 8 MiB to 1 GiB of RSS.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use capnp::capability::Promise;
use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use capnp_rpc::rpc_twoparty_capnp::Side;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::runtime::WireLimits;

type OutgoingBuilder = Rc<Builder<HeapAllocator>>;
type BoxRead = Box<dyn AsyncRead + Unpin>;

/// What the connection may still receive, switched by a successful login.
pub(crate) struct ReceiveLimits {
    options: Cell<ReaderOptions>,
    /// Messages still allowed before login (`None` once logged in).
    pre_login_left: Cell<Option<u32>>,
    after_login: ReaderOptions,
}

impl ReceiveLimits {
    /// Limits that start at `pre_login` (at most `max_messages` messages) and become
    /// `after_login` once [`ReceiveLimits::logged_in`] is called.
    pub(crate) fn new(pre_login: WireLimits, max_messages: u32, after_login: WireLimits) -> Self {
        Self {
            options: Cell::new(pre_login.reader_options()),
            pre_login_left: Cell::new(Some(max_messages)),
            after_login: after_login.reader_options(),
        }
    }

    /// From the next message on, the normal limits apply.
    pub(crate) fn logged_in(&self) {
        self.options.set(self.after_login);
        self.pre_login_left.set(None);
    }

    /// The options for the next message, or an error if a connection that has not logged
    /// in has sent all it may.
    fn next_message(&self) -> capnp::Result<ReaderOptions> {
        if let Some(left) = self.pre_login_left.get() {
            if left == 0 {
                return Err(capnp::Error::failed(
                    "too many messages before login".into(),
                ));
            }
            self.pre_login_left.set(Some(left - 1));
        }
        Ok(self.options.get())
    }
}

struct Incoming {
    message: capnp::message::Reader<capnp::serialize::OwnedSegments>,
}

impl capnp_rpc::IncomingMessage for Incoming {
    fn get_body(&self) -> capnp::Result<capnp::any_pointer::Reader<'_>> {
        self.message.get_root()
    }
}

struct Outgoing {
    message: Builder<HeapAllocator>,
    sender: capnp_futures::Sender<OutgoingBuilder>,
}

impl capnp_rpc::OutgoingMessage for Outgoing {
    fn get_body(&mut self) -> capnp::Result<capnp::any_pointer::Builder<'_>> {
        self.message.get_root()
    }

    fn get_body_as_reader(&self) -> capnp::Result<capnp::any_pointer::Reader<'_>> {
        self.message.get_root_as_reader()
    }

    fn send(self: Box<Self>) -> (Promise<(), capnp::Error>, OutgoingBuilder) {
        let Outgoing {
            message,
            mut sender,
        } = *self;
        let message = Rc::new(message);
        let sent = sender.send(message.clone());
        (
            Promise::from_future(async move { sent.await.map(|_| ()) }),
            message,
        )
    }

    fn take(self: Box<Self>) -> Builder<HeapAllocator> {
        self.message
    }

    fn size_in_words(&self) -> usize {
        self.message.size_in_words()
    }
}

struct ConnectionInner {
    input: Rc<RefCell<Option<BoxRead>>>,
    sender: capnp_futures::Sender<OutgoingBuilder>,
    limits: Rc<ReceiveLimits>,
    /// Fulfilled when the connection is dropped, ending the network's driver.
    on_disconnect: Option<futures_channel::oneshot::Sender<()>>,
}

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        if let Some(done) = self.on_disconnect.take() {
            let _ = done.send(());
        }
    }
}

struct Connection {
    inner: Rc<RefCell<ConnectionInner>>,
}

impl capnp_rpc::Connection<Side> for Connection {
    fn get_peer_vat_id(&self) -> Side {
        Side::Client
    }

    fn new_outgoing_message(
        &mut self,
        first_segment_word_size: u32,
    ) -> Box<dyn capnp_rpc::OutgoingMessage> {
        let message =
            Builder::new(HeapAllocator::new().first_segment_words(first_segment_word_size));
        Box::new(Outgoing {
            message,
            sender: self.inner.borrow().sender.clone(),
        })
    }

    fn receive_incoming_message(
        &mut self,
    ) -> Promise<Option<Box<dyn capnp_rpc::IncomingMessage>>, capnp::Error> {
        let inner = self.inner.borrow();
        let Some(mut input) = inner.input.borrow_mut().take() else {
            return Promise::err(capnp::Error::failed(
                "a message is already being read".into(),
            ));
        };
        let give_back = inner.input.clone();
        let limits = inner.limits.clone();
        Promise::from_future(async move {
            // The limits are those in force when the frame's first word arrives, not when
            // the read began: capnp-rpc starts reading the next message before the login
            // call it just received has run.
            let mut first = [0u8; 8];
            let mut got = 0;
            while got < first.len() {
                let n = input.read(&mut first[got..]).await?;
                if n == 0 {
                    if got == 0 {
                        return Ok(None);
                    }
                    return Err(capnp::Error::from_kind(
                        capnp::ErrorKind::PrematureEndOfFile,
                    ));
                }
                got += n;
            }
            let options = limits.next_message()?;
            let message = {
                let mut framed = futures_lite::io::AsyncReadExt::chain(&first[..], &mut input);
                capnp_futures::serialize::try_read_message(&mut framed, options).await?
            };
            *give_back.borrow_mut() = Some(input);
            Ok(message.map(|message| {
                Box::new(Incoming { message }) as Box<dyn capnp_rpc::IncomingMessage>
            }))
        })
    }

    fn shutdown(&mut self, result: capnp::Result<()>) -> Promise<(), capnp::Error> {
        Promise::from_future(self.inner.borrow_mut().sender.terminate(result))
    }
}

/// The server side of one connection, with receive limits that login switches.
pub(crate) struct ServerNetwork {
    connection: Option<Connection>,
    driver: Option<Promise<(), capnp::Error>>,
}

impl ServerNetwork {
    /// A network reading `input` and writing `output` under `limits`.
    pub(crate) fn new<W>(input: BoxRead, output: W, limits: Rc<ReceiveLimits>) -> Self
    where
        W: AsyncWrite + Unpin + 'static,
    {
        let (disconnected_tx, disconnected) = futures_channel::oneshot::channel::<()>();
        let (sender, write_queue) = capnp_futures::write_queue(output);
        // Wait for the disconnect even when the write queue failed, as capnp-rpc's own
        // two-party network does, so the connection is torn down in order.
        let driver = Promise::from_future(async move {
            let written = write_queue.await;
            let _ = disconnected.await;
            written
        });
        Self {
            connection: Some(Connection {
                inner: Rc::new(RefCell::new(ConnectionInner {
                    input: Rc::new(RefCell::new(Some(input))),
                    sender,
                    limits,
                    on_disconnect: Some(disconnected_tx),
                })),
            }),
            driver: Some(driver),
        }
    }
}

impl capnp_rpc::VatNetwork<Side> for ServerNetwork {
    fn connect(&mut self, _host_id: Side) -> Option<Box<dyn capnp_rpc::Connection<Side>>> {
        // A server never dials its client's bootstrap capability.
        None
    }

    fn accept(&mut self) -> Promise<Box<dyn capnp_rpc::Connection<Side>>, capnp::Error> {
        match self.connection.take() {
            Some(c) => Promise::ok(Box::new(c) as Box<dyn capnp_rpc::Connection<Side>>),
            None => Promise::from_future(std::future::pending()),
        }
    }

    fn drive_until_shutdown(&mut self) -> Promise<(), capnp::Error> {
        match self.driver.take() {
            Some(driver) => driver,
            None => Promise::from_future(std::future::pending()),
        }
    }
}
