//! The `http2-status` handler's report: what the stock mod_http2 shows
//! there (`SetHandler http2-status`), the HTTP/2 connection a request came
//! on as JSON: both sides' settings, the flow-control windows, the streams
//! and the connection's counters. The session builds the figures on c1's
//! thread (`session::Core::report`), the only one that may look at the
//! nghttp2 session; this file only writes them out, in the stock module's
//! layout, so that scripts reading it keep working.

use crate::nghttp2::settings_id;
use libnghttp2_sys as ng;
use std::fmt::Write;

/// A connection's state at the moment of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionReport {
    pub max_concurrent_streams: u32,
    pub max_frame_size: u32,
    pub initial_window_size: u32,
    /// The client's SETTINGS, in `PEER_SETTINGS` order.
    pub peer_settings: [u32; PEER_SETTINGS.len()],
    /// Connection windows: what the client may still send us, and what
    /// we may still send it.
    pub conn_flow_in: i32,
    pub conn_flow_out: i32,
    pub sent_goaway: bool,
    /// In stream id order.
    pub streams: Vec<StreamReport>,
    pub requests: u64,
    pub resets_received: u64,
    pub frames_received: u64,
    pub octets_received: u64,
    pub responses: u64,
    pub frames_sent: u64,
    pub octets_sent: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    pub id: i32,
    pub state: &'static str,
    /// Stream windows, as the connection's.
    pub flow_in: i32,
    pub flow_out: i32,
    /// Frame bytes received and sent on the stream.
    pub data_in: u64,
    pub data_out: u64,
}

/// The client's settings the report lists: (nghttp2's id, name).
pub const PEER_SETTINGS: [(i32, &str); 6] = [
    (settings_id::MAX_CONCURRENT_STREAMS, "SETTINGS_MAX_CONCURRENT_STREAMS"),
    (settings_id::MAX_FRAME_SIZE, "SETTINGS_MAX_FRAME_SIZE"),
    (settings_id::INITIAL_WINDOW_SIZE, "SETTINGS_INITIAL_WINDOW_SIZE"),
    (settings_id::ENABLE_PUSH, "SETTINGS_ENABLE_PUSH"),
    (settings_id::HEADER_TABLE_SIZE, "SETTINGS_HEADER_TABLE_SIZE"),
    (settings_id::MAX_HEADER_LIST_SIZE, "SETTINGS_MAX_HEADER_LIST_SIZE"),
];

impl SessionReport {
    /// The report as the stock module writes it (its "draft-01" layout).
    /// Server push does not exist here, so its counters are zero. Unlike
    /// the stock module's, a stream has no "created" time: nothing on a
    /// request's path records one, and a clock read per stream is not
    /// worth a debugging page.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(1024 + 160 * self.streams.len());
        // Writing to a String cannot fail.
        let _ = self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) -> std::fmt::Result {
        out.push_str("{\n  \"version\": \"draft-01\",\n");
        out.push_str("  \"settings\": {\n");
        writeln!(out, "    \"SETTINGS_MAX_CONCURRENT_STREAMS\": {},", self.max_concurrent_streams)?;
        writeln!(out, "    \"SETTINGS_MAX_FRAME_SIZE\": {},", self.max_frame_size)?;
        writeln!(out, "    \"SETTINGS_INITIAL_WINDOW_SIZE\": {},", self.initial_window_size)?;
        out.push_str("    \"SETTINGS_ENABLE_PUSH\": 0\n  },\n");
        out.push_str("  \"peerSettings\": {\n");
        for (i, ((_, name), value)) in PEER_SETTINGS.iter().zip(self.peer_settings).enumerate() {
            let comma = if i + 1 < PEER_SETTINGS.len() { "," } else { "" };
            // Signed, as the stock module prints them (`%d`): a setting
            // the client left unlimited reads -1, which scripts test for.
            writeln!(out, "    \"{name}\": {}{comma}", value as i32)?;
        }
        out.push_str("  },\n");
        writeln!(out, "  \"connFlowIn\": {},", self.conn_flow_in)?;
        writeln!(out, "  \"connFlowOut\": {},", self.conn_flow_out)?;
        writeln!(out, "  \"sentGoAway\": {},", self.sent_goaway as u8)?;
        out.push_str("  \"streams\": {");
        for (i, s) in self.streams.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(out, "{comma}\n    \"{}\": {{\n", s.id)?;
            writeln!(out, "    \"state\": \"{}\",", s.state)?;
            writeln!(out, "    \"flowIn\": {},", s.flow_in)?;
            writeln!(out, "    \"flowOut\": {},", s.flow_out)?;
            writeln!(out, "    \"dataIn\": {},", s.data_in)?;
            writeln!(out, "    \"dataOut\": {}", s.data_out)?;
            out.push_str("    }");
        }
        out.push_str("\n  },\n");
        out.push_str("  \"stats\": {\n");
        out.push_str("    \"in\": {\n");
        writeln!(out, "      \"requests\": {},", self.requests)?;
        writeln!(out, "      \"resets\": {},", self.resets_received)?;
        writeln!(out, "      \"frames\": {},", self.frames_received)?;
        writeln!(out, "      \"octets\": {}", self.octets_received)?;
        out.push_str("    },\n");
        out.push_str("    \"out\": {\n");
        writeln!(out, "      \"responses\": {},", self.responses)?;
        writeln!(out, "      \"frames\": {},", self.frames_sent)?;
        writeln!(out, "      \"octets\": {}", self.octets_sent)?;
        out.push_str("    },\n");
        out.push_str("    \"push\": {\n      \"promises\": 0,\n      \"submits\": 0,\n      \"resets\": 0\n    }\n");
        out.push_str("  }\n}\n");
        Ok(())
    }
}

/// The name the stock module gives a stream state, from nghttp2's
/// `nghttp2_stream_proto_state` (`None`: the stream is no longer known to
/// nghttp2, its worker still runs).
pub fn state_name(state: Option<ng::nghttp2_stream_proto_state>) -> &'static str {
    match state {
        Some(ng::NGHTTP2_STREAM_STATE_IDLE) => "IDLE",
        Some(ng::NGHTTP2_STREAM_STATE_OPEN) => "OPEN",
        Some(ng::NGHTTP2_STREAM_STATE_RESERVED_LOCAL) => "RESERVED_LOCAL",
        Some(ng::NGHTTP2_STREAM_STATE_RESERVED_REMOTE) => "RESERVED_REMOTE",
        Some(ng::NGHTTP2_STREAM_STATE_HALF_CLOSED_LOCAL) => "HALF_CLOSED_LOCAL",
        Some(ng::NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE) => "HALF_CLOSED_REMOTE",
        _ => "CLOSED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionReport {
        SessionReport {
            max_concurrent_streams: 100,
            max_frame_size: 16384,
            initial_window_size: 65535,
            peer_settings: [100, 16384, 65535, 0, 4096, u32::MAX],
            conn_flow_in: 1 << 20,
            conn_flow_out: 65535,
            sent_goaway: false,
            streams: vec![
                StreamReport {
                    id: 1,
                    state: "HALF_CLOSED_REMOTE",
                    flow_in: 65535,
                    flow_out: 65535,
                    data_in: 40,
                    data_out: 0,
                },
                StreamReport { id: 3, state: "OPEN", flow_in: 1000, flow_out: -5, data_in: 2, data_out: 9 },
            ],
            requests: 2,
            resets_received: 1,
            frames_received: 7,
            octets_received: 300,
            responses: 1,
            frames_sent: 4,
            octets_sent: 200,
        }
    }

    #[test]
    fn the_report_has_the_stock_modules_layout() {
        let json = sample().to_json();
        let expected = r#"{
  "version": "draft-01",
  "settings": {
    "SETTINGS_MAX_CONCURRENT_STREAMS": 100,
    "SETTINGS_MAX_FRAME_SIZE": 16384,
    "SETTINGS_INITIAL_WINDOW_SIZE": 65535,
    "SETTINGS_ENABLE_PUSH": 0
  },
  "peerSettings": {
    "SETTINGS_MAX_CONCURRENT_STREAMS": 100,
    "SETTINGS_MAX_FRAME_SIZE": 16384,
    "SETTINGS_INITIAL_WINDOW_SIZE": 65535,
    "SETTINGS_ENABLE_PUSH": 0,
    "SETTINGS_HEADER_TABLE_SIZE": 4096,
    "SETTINGS_MAX_HEADER_LIST_SIZE": -1
  },
  "connFlowIn": 1048576,
  "connFlowOut": 65535,
  "sentGoAway": 0,
  "streams": {
    "1": {
    "state": "HALF_CLOSED_REMOTE",
    "flowIn": 65535,
    "flowOut": 65535,
    "dataIn": 40,
    "dataOut": 0
    },
    "3": {
    "state": "OPEN",
    "flowIn": 1000,
    "flowOut": -5,
    "dataIn": 2,
    "dataOut": 9
    }
  },
  "stats": {
    "in": {
      "requests": 2,
      "resets": 1,
      "frames": 7,
      "octets": 300
    },
    "out": {
      "responses": 1,
      "frames": 4,
      "octets": 200
    },
    "push": {
      "promises": 0,
      "submits": 0,
      "resets": 0
    }
  }
}
"#;
        assert_eq!(json, expected);
    }

    #[test]
    fn a_report_without_streams_is_still_an_object() {
        let json = SessionReport { streams: Vec::new(), ..sample() }.to_json();
        assert!(json.contains("  \"streams\": {\n  },\n"), "{json}");
    }

    #[test]
    fn states_are_named_as_the_stock_module_names_them() {
        assert_eq!(state_name(Some(ng::NGHTTP2_STREAM_STATE_OPEN)), "OPEN");
        assert_eq!(state_name(Some(ng::NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE)), "HALF_CLOSED_REMOTE");
        assert_eq!(state_name(Some(ng::NGHTTP2_STREAM_STATE_CLOSED)), "CLOSED");
        assert_eq!(state_name(None), "CLOSED");
    }
}
