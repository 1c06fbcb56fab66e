//! Messages of the envd `filesystem.Filesystem` service (`api/envd/filesystem/filesystem.proto`).
//!
//! Encoded as Go's `protojson` does it (`docs/contract.md` §7): lowerCamelCase names,
//! default values left out, `size` (int64) as a decimal string, enums by name, the
//! `google.protobuf.Timestamp` as RFC 3339 with `Z`, `symlinkTarget` only when set and the
//! `WatchDirResponse` oneof member at the top level. Decoders also accept the snake_case names,
//! enum numbers and int64 numbers.

use crate::pj;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $num:literal => $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            /// The protobuf enum value name, as protojson writes it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            /// The protobuf enum number.
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num),+ }
            }
            /// The variant of a number (unknown numbers give `None`).
            pub fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }
            /// The variant of a value name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum V {
                    S(String),
                    N(i64),
                }
                match V::deserialize(d)? {
                    V::S(s) => $name::from_name(&s)
                        .ok_or_else(|| serde::de::Error::custom(format!("unknown {} value {s:?}", stringify!($name)))),
                    V::N(n) => $name::from_number(n)
                        .ok_or_else(|| serde::de::Error::custom(format!("unknown {} number {n}", stringify!($name)))),
                }
            }
        }
    };
}

proto_enum!(
    /// `filesystem.FileType`.
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
);

proto_enum!(
    /// `filesystem.EventType`.
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
);

fn unix_epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// `filesystem.EntryInfo` (`api/envd/filesystem/filesystem.proto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntryInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "pj::is_default")]
    pub file_type: FileType,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(with = "pj::i64_string", skip_serializing_if = "pj::is_default")]
    pub size: i64,
    #[serde(skip_serializing_if = "pj::is_default")]
    pub mode: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Always present in what the agent emits (the SDK needs a datetime).
    #[serde(with = "pj::timestamp", alias = "modified_time")]
    pub modified_time: DateTime<Utc>,
    /// Set only for symlinks: the fully resolved target.
    #[serde(skip_serializing_if = "Option::is_none", alias = "symlink_target")]
    pub symlink_target: Option<String>,
    /// `user.e2b.*` extended attributes without the prefix; left out when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The entry itself is a symlink (field 12; `type` describes its target). The SDKs from
    /// e2b 2.51 show such an entry as a symlink; older ones ignore the field.
    #[serde(skip_serializing_if = "pj::is_default", alias = "is_symlink")]
    pub is_symlink: bool,
}

impl Default for EntryInfo {
    fn default() -> Self {
        Self {
            name: String::new(),
            file_type: FileType::Unspecified,
            path: String::new(),
            size: 0,
            mode: 0,
            permissions: String::new(),
            owner: String::new(),
            group: String::new(),
            modified_time: unix_epoch(),
            symlink_target: None,
            metadata: BTreeMap::new(),
            is_symlink: false,
        }
    }
}

/// A request that carries one `path`: `StatRequest`, `MakeDirRequest`, `RemoveRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// `StatRequest`.
pub type StatRequest = PathRequest;
/// `MakeDirRequest`.
pub type MakeDirRequest = PathRequest;
/// `RemoveRequest`.
pub type RemoveRequest = PathRequest;

/// A response that carries one `entry`: `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `StatResponse`.
pub type StatResponse = EntryResponse;
/// `MakeDirResponse`.
pub type MakeDirResponse = EntryResponse;
/// `MoveResponse`.
pub type MoveResponse = EntryResponse;

/// `MoveRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
}

/// `ListDirRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "pj::is_default")]
    pub depth: u32,
}

/// `ListDirResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryInfo>,
}

/// An empty message (`RemoveResponse`, `RemoveWatcherResponse`, the `start` and `keepalive`
/// members of `WatchDirResponse`): always `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `RemoveResponse`.
pub type RemoveResponse = Empty;
/// `RemoveWatcherResponse`.
pub type RemoveWatcherResponse = Empty;

/// `WatchDirRequest` and `CreateWatcherRequest` (same four fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchDirRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "pj::is_default")]
    pub recursive: bool,
    #[serde(skip_serializing_if = "pj::is_default", alias = "include_entry")]
    pub include_entry: bool,
    #[serde(skip_serializing_if = "pj::is_default", alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

/// `CreateWatcherRequest`.
pub type CreateWatcherRequest = WatchDirRequest;

/// `FilesystemEvent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemEvent {
    /// Path relative to the watched directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "pj::is_default")]
    pub event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse`: a oneof, written as its member at the top level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // short-lived wire message
pub enum WatchDirResponse {
    /// `{"start":{}}`, sent first.
    Start(Empty),
    /// `{"filesystem":{...}}`.
    Filesystem(FilesystemEvent),
    /// `{"keepalive":{}}`.
    Keepalive(Empty),
}

/// `CreateWatcherResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateWatcherResponse {
    #[serde(skip_serializing_if = "String::is_empty", alias = "watcher_id")]
    pub watcher_id: String,
}

/// `GetWatcherEventsRequest` and `RemoveWatcherRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatcherIdRequest {
    #[serde(skip_serializing_if = "String::is_empty", alias = "watcher_id")]
    pub watcher_id: String,
}

/// `GetWatcherEventsRequest`.
pub type GetWatcherEventsRequest = WatcherIdRequest;
/// `RemoveWatcherRequest`.
pub type RemoveWatcherRequest = WatcherIdRequest;

/// `GetWatcherEventsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetWatcherEventsResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<FilesystemEvent>,
}

/// One entry of the `POST /files` response array (`docs/contract.md` §6.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadedEntry {
    pub path: String,
    pub name: String,
    /// Always `"file"`.
    #[serde(rename = "type")]
    pub entry_type: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub metadata: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> EntryInfo {
        EntryInfo {
            name: "a.txt".into(),
            file_type: FileType::File,
            path: "/home/user/a.txt".into(),
            size: 4,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Utc.timestamp_opt(1_767_323_045, 123_456_789).unwrap(),
            symlink_target: None,
            metadata: BTreeMap::new(),
            is_symlink: false,
        }
    }

    #[test]
    fn entry_info_json_is_protojson() {
        let s = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            s,
            r#"{"name":"a.txt","type":"FILE_TYPE_FILE","path":"/home/user/a.txt","size":"4","mode":420,"permissions":"-rw-r--r--","owner":"user","group":"user","modifiedTime":"2026-01-02T03:04:05.123456789Z"}"#
        );
        let mut e = sample();
        e.symlink_target = Some("/home/user/b".into());
        e.is_symlink = true;
        e.metadata.insert("k".into(), "v".into());
        e.size = 0;
        e.modified_time = Utc.timestamp_opt(1_767_323_045, 0).unwrap();
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains(r#""symlinkTarget":"/home/user/b""#), "{s}");
        assert!(s.contains(r#""isSymlink":true"#), "{s}");
        assert!(s.contains(r#""metadata":{"k":"v"}"#), "{s}");
        assert!(s.contains(r#""modifiedTime":"2026-01-02T03:04:05Z""#), "{s}");
        assert!(!s.contains("size"), "{s}");
        let back: EntryInfo = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn watch_response_oneof_at_top_level() {
        let start = serde_json::to_string(&WatchDirResponse::Start(Empty {})).unwrap();
        assert_eq!(start, r#"{"start":{}}"#);
        let ka = serde_json::to_string(&WatchDirResponse::Keepalive(Empty {})).unwrap();
        assert_eq!(ka, r#"{"keepalive":{}}"#);
        let ev = WatchDirResponse::Filesystem(FilesystemEvent {
            name: "a.txt".into(),
            event_type: EventType::Write,
            entry: None,
        });
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"filesystem":{"name":"a.txt","type":"EVENT_TYPE_WRITE"}}"#
        );
    }

    #[test]
    fn requests_decode_camel_snake_and_numbers() {
        let r: WatchDirRequest =
            serde_json::from_str(r#"{"path":"d","recursive":true,"includeEntry":true}"#).unwrap();
        assert!(r.recursive && r.include_entry && !r.allow_network_mounts);
        let r: WatchDirRequest = serde_json::from_str(r#"{"path":"d","allow_network_mounts":true}"#).unwrap();
        assert!(r.allow_network_mounts);
        let r: WatcherIdRequest = serde_json::from_str(r#"{"watcher_id":"w1"}"#).unwrap();
        assert_eq!(r.watcher_id, "w1");
        let r: ListDirRequest = serde_json::from_str(r#"{"path":"x","depth":2,"unknown":1}"#).unwrap();
        assert_eq!(r.depth, 2);
        assert!(serde_json::from_str::<ListDirRequest>(r#"{"depth":-1}"#).is_err());
        assert!(serde_json::from_str::<PathRequest>(r#"{"path":5}"#).is_err());
        assert_eq!(
            serde_json::from_str::<FileType>("2").unwrap(),
            FileType::Directory
        );
        assert_eq!(
            serde_json::from_str::<EventType>(r#""EVENT_TYPE_CHMOD""#).unwrap(),
            EventType::Chmod
        );
        assert!(serde_json::from_str::<EventType>(r#""NOPE""#).is_err());
    }

    #[test]
    fn empty_responses_and_upload_entries() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&ListDirResponse::default()).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&GetWatcherEventsResponse::default()).unwrap(),
            "{}"
        );
        let u = UploadedEntry {
            path: "/home/user/a".into(),
            name: "a".into(),
            entry_type: "file".into(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"path":"/home/user/a","name":"a","type":"file"}"#
        );
    }
}
