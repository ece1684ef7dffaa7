//! The id Kafka gives each topic when it is created (KIP-516).
//!
//! A topic deleted and created again under the same name gets a new id, and
//! that is the only reliable way to tell the two apart: offsets, partition
//! counts and names can all match. The state layer stamps each local store
//! with its changelog's id, so a store built from an older incarnation of
//! the changelog is never mistaken for a copy of the current one.
//!
//! rust-rdkafka does not wrap librdkafka's `DescribeTopics` admin call, so
//! this module calls it through the C API that rdkafka re-exports. Every
//! pointer it creates is destroyed before it returns.

use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// Describes `topic` and returns its id (Kafka's base64 form, as the
/// broker's tools print it). `Ok(None)`: the topic does not exist.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let name = CString::new(topic).map_err(|_| format!("topic name {topic:?} has a NUL byte"))?;
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `client.native_ptr()` is a live handle for the duration of
    // this call (we hold a reference to its owner). Each object below is
    // created here, used only while alive, and destroyed exactly once on
    // every path by its guard.
    unsafe {
        let rk = client.native_ptr();
        let mut names: [*const c_char; 1] = [name.as_ptr()];
        let collection = Guard(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Guard(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        rd::rd_kafka_DescribeTopics(rk, collection.0, options.0, queue.0);
        // The answer arrives as one event on our queue; a little longer
        // than the request timeout, so librdkafka's own timeout answers.
        let event = rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1_000));
        if event.is_null() {
            return Err(format!(
                "describing topic {topic}: no answer within {timeout:?}"
            ));
        }
        let event = Guard(event, rd::rd_kafka_event_destroy);
        let code = rd::rd_kafka_event_error(event.0);
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(format!(
                "describing topic {topic}: {}",
                text(rd::rd_kafka_event_error_string(event.0))
            ));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err(format!(
                "describing topic {topic}: not a DescribeTopics result"
            ));
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        // One topic asked for, so one description (or none).
        if count == 0 || descriptions.is_null() {
            return Err(format!("describing topic {topic}: empty answer"));
        }
        let description = *descriptions;
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null() {
            let code = rd::rd_kafka_error_code(error);
            if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                return Ok(None);
            }
            return Err(format!(
                "describing topic {topic}: {}",
                text(rd::rd_kafka_error_string(error))
            ));
        }
        let id = rd::rd_kafka_TopicDescription_topic_id(description);
        if id.is_null() {
            return Err(format!(
                "describing topic {topic}: the broker sent no topic id"
            ));
        }
        Ok(Some(text(rd::rd_kafka_Uuid_base64str(id))))
    }
}

/// Destroys a librdkafka object when it goes out of scope.
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching constructor and is
            // destroyed only here.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// Copies a C string librdkafka owns (may be null).
///
/// # Safety
/// `ptr` is null or a valid NUL-terminated string.
unsafe fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: as the function's contract says.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
