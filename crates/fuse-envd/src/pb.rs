//! The messages of envd's two services, `process.Process` and `filesystem.Filesystem`,
//! written by hand from their public `.proto` definitions (field numbers and types as
//! there), each with both encodings the Connect protocol carries: binary protobuf (prost)
//! and the canonical protobuf JSON mapping (serde): lowerCamelCase names (the proto names
//! are accepted too), `bytes` as base64, `int64` as a string, enums by name, a `oneof` as
//! the one field that is set, a `Timestamp` as RFC 3339.

#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `bytes` as standard base64 (any base64 is accepted).
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(text).ok())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("bytes field is not base64"))
    }

    /// For `Option<Vec<u8>>` fields of the JSON forms of oneofs.
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => super::serialize(b, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(t) => super::decode(&t)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom("bytes field is not base64")),
            }
        }
    }
}

/// `int64` as a decimal string (a number is accepted too).
pub mod i64s {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            S(String),
            I(i64),
        }
        match N::deserialize(d)? {
            N::I(i) => Ok(i),
            N::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Enum fields (an `i32` in prost) by name; a number or a name is accepted.
macro_rules! proto_enum {
    ($module:ident, $ty:ident { $($variant:ident = $num:literal => $name:literal),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum $ty {
            $($variant = $num),+
        }

        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn name(v: i32) -> &'static str {
                match v {
                    $($num => $name,)+
                    _ => "",
                }
            }

            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                match name(*v) {
                    "" => s.serialize_i32(*v),
                    n => s.serialize_str(n),
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum N {
                    S(String),
                    I(i32),
                }
                match N::deserialize(d)? {
                    N::I(i) => Ok(i),
                    N::S(s) => match s.as_str() {
                        $($name => Ok($num),)+
                        other => Err(serde::de::Error::custom(format!("unknown enum value {other}"))),
                    },
                }
            }
        }
    };
}

proto_enum!(signal_enum, Signal {
    Unspecified = 0 => "SIGNAL_UNSPECIFIED",
    Sigterm = 15 => "SIGNAL_SIGTERM",
    Sigkill = 9 => "SIGNAL_SIGKILL",
});

proto_enum!(file_type_enum, FileType {
    Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
    File = 1 => "FILE_TYPE_FILE",
    Directory = 2 => "FILE_TYPE_DIRECTORY",
    Symlink = 3 => "FILE_TYPE_SYMLINK",
});

proto_enum!(event_type_enum, EventType {
    Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
    Create = 1 => "EVENT_TYPE_CREATE",
    Write = 2 => "EVENT_TYPE_WRITE",
    Remove = 3 => "EVENT_TYPE_REMOVE",
    Rename = 4 => "EVENT_TYPE_RENAME",
    Chmod = 5 => "EVENT_TYPE_CHMOD",
});

/// An empty message (requests and responses without fields, keep-alives, start events).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Empty {}

// ---- process ----------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    #[prost(uint32, tag = "1")]
    pub cols: u32,
    #[prost(uint32, tag = "2")]
    pub rows: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Pty {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    #[prost(string, tag = "1")]
    pub cmd: String,
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub envs: BTreeMap<String, String>,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ProcessConfig>,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessConfig>,
    #[prost(message, optional, tag = "2")]
    pub pty: Option<Pty>,
    #[prost(string, optional, tag = "3")]
    pub tag: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub stdin: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    pub pty: Option<Pty>,
}

/// `ProcessSelector`: `oneof selector { uint32 pid = 1; string tag = 2; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "SelectorJson", into = "SelectorJson")]
pub struct ProcessSelector {
    #[prost(oneof = "Selector", tags = "1, 2")]
    pub selector: Option<Selector>,
}

#[derive(Clone, PartialEq, Eq, prost::Oneof)]
pub enum Selector {
    #[prost(uint32, tag = "1")]
    Pid(u32),
    #[prost(string, tag = "2")]
    Tag(String),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct SelectorJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

impl From<SelectorJson> for ProcessSelector {
    fn from(j: SelectorJson) -> Self {
        let selector = match (j.pid, j.tag) {
            (Some(p), _) => Some(Selector::Pid(p)),
            (None, Some(t)) => Some(Selector::Tag(t)),
            (None, None) => None,
        };
        ProcessSelector { selector }
    }
}

impl From<ProcessSelector> for SelectorJson {
    fn from(s: ProcessSelector) -> Self {
        match s.selector {
            Some(Selector::Pid(p)) => SelectorJson {
                pid: Some(p),
                tag: None,
            },
            Some(Selector::Tag(t)) => SelectorJson {
                pid: None,
                tag: Some(t),
            },
            None => SelectorJson::default(),
        }
    }
}

/// `ProcessEvent`: `oneof event { start = 1; data = 2; end = 3; keepalive = 4; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "ProcessEventJson", into = "ProcessEventJson")]
pub struct ProcessEvent {
    #[prost(oneof = "Event", tags = "1, 2, 3, 4")]
    pub event: Option<Event>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Event {
    #[prost(message, tag = "1")]
    Start(StartEvent),
    #[prost(message, tag = "2")]
    Data(DataEvent),
    #[prost(message, tag = "3")]
    End(EndEvent),
    #[prost(message, tag = "4")]
    Keepalive(Empty),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct ProcessEventJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<StartEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<EndEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<Empty>,
}

impl From<ProcessEventJson> for ProcessEvent {
    fn from(j: ProcessEventJson) -> Self {
        let event = if let Some(s) = j.start {
            Some(Event::Start(s))
        } else if let Some(d) = j.data {
            Some(Event::Data(d))
        } else if let Some(e) = j.end {
            Some(Event::End(e))
        } else {
            j.keepalive.map(Event::Keepalive)
        };
        ProcessEvent { event }
    }
}

impl From<ProcessEvent> for ProcessEventJson {
    fn from(e: ProcessEvent) -> Self {
        let mut j = ProcessEventJson::default();
        match e.event {
            Some(Event::Start(s)) => j.start = Some(s),
            Some(Event::Data(d)) => j.data = Some(d),
            Some(Event::End(e)) => j.end = Some(e),
            Some(Event::Keepalive(k)) => j.keepalive = Some(k),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StartEvent {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

/// `DataEvent`: `oneof output { bytes stdout = 1; bytes stderr = 2; bytes pty = 3; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "DataJson", into = "DataJson")]
pub struct DataEvent {
    #[prost(oneof = "Output", tags = "1, 2, 3")]
    pub output: Option<Output>,
}

#[derive(Clone, PartialEq, Eq, prost::Oneof)]
pub enum Output {
    #[prost(bytes, tag = "1")]
    Stdout(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Stderr(Vec<u8>),
    #[prost(bytes, tag = "3")]
    Pty(Vec<u8>),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct DataJson {
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    stdout: Option<Vec<u8>>,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    stderr: Option<Vec<u8>>,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pty: Option<Vec<u8>>,
}

impl From<DataJson> for DataEvent {
    fn from(j: DataJson) -> Self {
        let output = match (j.stdout, j.stderr, j.pty) {
            (Some(b), _, _) => Some(Output::Stdout(b)),
            (None, Some(b), _) => Some(Output::Stderr(b)),
            (None, None, Some(b)) => Some(Output::Pty(b)),
            (None, None, None) => None,
        };
        DataEvent { output }
    }
}

impl From<DataEvent> for DataJson {
    fn from(d: DataEvent) -> Self {
        let mut j = DataJson::default();
        match d.output {
            Some(Output::Stdout(b)) => j.stdout = Some(b),
            Some(Output::Stderr(b)) => j.stderr = Some(b),
            Some(Output::Pty(b)) => j.pty = Some(b),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EndEvent {
    #[prost(sint32, tag = "1")]
    #[serde(alias = "exit_code")]
    pub exit_code: i32,
    #[prost(bool, tag = "2")]
    pub exited: bool,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StartResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

/// `ProcessInput`: `oneof input { bytes stdin = 1; bytes pty = 2; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "InputJson", into = "InputJson")]
pub struct ProcessInput {
    #[prost(oneof = "Input", tags = "1, 2")]
    pub input: Option<Input>,
}

#[derive(Clone, PartialEq, Eq, prost::Oneof)]
pub enum Input {
    #[prost(bytes, tag = "1")]
    Stdin(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Pty(Vec<u8>),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct InputJson {
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    stdin: Option<Vec<u8>>,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pty: Option<Vec<u8>>,
}

impl From<InputJson> for ProcessInput {
    fn from(j: InputJson) -> Self {
        let input = match (j.stdin, j.pty) {
            (Some(b), _) => Some(Input::Stdin(b)),
            (None, Some(b)) => Some(Input::Pty(b)),
            (None, None) => None,
        };
        ProcessInput { input }
    }
}

impl From<ProcessInput> for InputJson {
    fn from(i: ProcessInput) -> Self {
        match i.input {
            Some(Input::Stdin(b)) => InputJson {
                stdin: Some(b),
                pty: None,
            },
            Some(Input::Pty(b)) => InputJson {
                stdin: None,
                pty: Some(b),
            },
            None => InputJson::default(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    pub input: Option<ProcessInput>,
}

/// `StreamInputRequest`: `oneof event { StartEvent start = 1; DataEvent data = 2;
/// KeepAlive keepalive = 3; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "StreamInputJson", into = "StreamInputJson")]
pub struct StreamInputRequest {
    #[prost(oneof = "StreamInput", tags = "1, 2, 3")]
    pub event: Option<StreamInput>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum StreamInput {
    #[prost(message, tag = "1")]
    Start(StreamInputStart),
    #[prost(message, tag = "2")]
    Data(StreamInputData),
    #[prost(message, tag = "3")]
    Keepalive(Empty),
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputStart {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputData {
    #[prost(message, optional, tag = "2")]
    pub input: Option<ProcessInput>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct StreamInputJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<StreamInputStart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<StreamInputData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<Empty>,
}

impl From<StreamInputJson> for StreamInputRequest {
    fn from(j: StreamInputJson) -> Self {
        let event = if let Some(s) = j.start {
            Some(StreamInput::Start(s))
        } else if let Some(d) = j.data {
            Some(StreamInput::Data(d))
        } else {
            j.keepalive.map(StreamInput::Keepalive)
        };
        StreamInputRequest { event }
    }
}

impl From<StreamInputRequest> for StreamInputJson {
    fn from(r: StreamInputRequest) -> Self {
        let mut j = StreamInputJson::default();
        match r.event {
            Some(StreamInput::Start(s)) => j.start = Some(s),
            Some(StreamInput::Data(d)) => j.data = Some(d),
            Some(StreamInput::Keepalive(k)) => j.keepalive = Some(k),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(enumeration = "Signal", tag = "2")]
    #[serde(with = "signal_enum")]
    pub signal: i32,
}

/// `CloseStdinRequest` and `ConnectRequest`: one selector.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
}

// ---- filesystem -------------------------------------------------------------------------

/// `google.protobuf.Timestamp`; RFC 3339 in JSON.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = time::OffsetDateTime::from_unix_timestamp(self.seconds)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .replace_nanosecond(self.nanos.clamp(0, 999_999_999) as u32)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let text = t
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        Ok(Timestamp {
            seconds: t.unix_timestamp(),
            nanos: t.nanosecond() as i32,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "FileType", tag = "2")]
    #[serde(with = "file_type_enum")]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(int64, tag = "4")]
    #[serde(with = "i64s")]
    pub size: i64,
    #[prost(uint32, tag = "5")]
    pub mode: u32,
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    #[serde(alias = "modified_time", skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<Timestamp>,
    #[prost(string, optional, tag = "10")]
    #[serde(alias = "symlink_target", skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub metadata: BTreeMap<String, String>,
}

/// Requests of one path: `StatRequest`, `MakeDirRequest`, `RemoveRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

/// Responses of one entry: `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    pub depth: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (the same fields).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatchDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    #[serde(alias = "include_entry")]
    pub include_entry: bool,
    #[prost(bool, tag = "4")]
    #[serde(alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemEvent {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "EventType", tag = "2")]
    #[serde(with = "event_type_enum")]
    pub r#type: i32,
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse`: `oneof event { StartEvent start = 1; FilesystemEvent filesystem = 2;
/// KeepAlive keepalive = 3; }`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(from = "WatchJson", into = "WatchJson")]
pub struct WatchDirResponse {
    #[prost(oneof = "Watch", tags = "1, 2, 3")]
    pub event: Option<Watch>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
#[allow(clippy::large_enum_variant)] // as prost generates it: one event at a time
pub enum Watch {
    #[prost(message, tag = "1")]
    Start(Empty),
    #[prost(message, tag = "2")]
    Filesystem(FilesystemEvent),
    #[prost(message, tag = "3")]
    Keepalive(Empty),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct WatchJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filesystem: Option<FilesystemEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<Empty>,
}

impl From<WatchJson> for WatchDirResponse {
    fn from(j: WatchJson) -> Self {
        let event = if let Some(s) = j.start {
            Some(Watch::Start(s))
        } else if let Some(f) = j.filesystem {
            Some(Watch::Filesystem(f))
        } else {
            j.keepalive.map(Watch::Keepalive)
        };
        WatchDirResponse { event }
    }
}

impl From<WatchDirResponse> for WatchJson {
    fn from(w: WatchDirResponse) -> Self {
        let mut j = WatchJson::default();
        match w.event {
            Some(Watch::Start(s)) => j.start = Some(s),
            Some(Watch::Filesystem(f)) => j.filesystem = Some(f),
            Some(Watch::Keepalive(k)) => j.keepalive = Some(k),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatcherId {
    #[prost(string, tag = "1")]
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct WatcherEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn json_follows_the_protobuf_mapping() {
        let ev = StartResponse {
            event: Some(ProcessEvent {
                event: Some(Event::Data(DataEvent {
                    output: Some(Output::Stdout(b"hi\n".to_vec())),
                })),
            }),
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        let end = ProcessEvent {
            event: Some(Event::End(EndEvent {
                exit_code: -1,
                exited: false,
                status: "signal: killed".into(),
                error: None,
            })),
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"end":{"exitCode":-1,"exited":false,"status":"signal: killed"}}"#
        );
        let e = EntryInfo {
            name: "a".into(),
            r#type: FileType::Directory as i32,
            size: 4096,
            modified_time: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(v["size"], "4096");
        assert_eq!(v["modifiedTime"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn json_requests_accept_both_spellings_and_numbers() {
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":42},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!(r.signal, 9);
        assert_eq!(
            r.process.unwrap().selector,
            Some(Selector::Pid(42)),
            "the oneof is the field that is set"
        );
        let r: SendSignalRequest = serde_json::from_str(r#"{"signal":15}"#).unwrap();
        assert_eq!(r.signal, 15);
        let w: WatchDirRequest =
            serde_json::from_str(r#"{"path":"/x","include_entry":true}"#).unwrap();
        assert!(w.include_entry);
        let i: SendInputRequest =
            serde_json::from_str(r#"{"process":{"tag":"t"},"input":{"stdin":"aGk="}}"#).unwrap();
        assert_eq!(i.input.unwrap().input, Some(Input::Stdin(b"hi".to_vec())));
        let bad = serde_json::from_str::<SendSignalRequest>(r#"{"signal":"SIGNAL_NOPE"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn binary_round_trips_with_the_proto_field_numbers() {
        let req = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec!["-c".into(), "echo hi".into()],
                envs: [("A".to_string(), "b".to_string())].into(),
                cwd: Some("/tmp".into()),
            }),
            pty: None,
            tag: Some("t".into()),
            stdin: Some(false),
        };
        let bytes = req.encode_to_vec();
        // Field 1 (process), length-delimited: tag byte 0x0a.
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(StartRequest::decode(bytes.as_slice()).unwrap(), req);
        // sint32 is zigzag: -1 encodes as 1.
        let end = EndEvent {
            exit_code: -1,
            ..Default::default()
        };
        assert_eq!(end.encode_to_vec(), vec![0x08, 0x01]);
    }
}
