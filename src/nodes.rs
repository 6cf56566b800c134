//! Nodes as the operator sees them: only whether each is Ready, and why not. A pod on a node
//! that is not Ready is lost with it: its kubelet no longer runs it, or no longer says so.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use kube::ResourceExt;

/// Why `node` is not Ready, in its own words (`NodeStatusUnknown: Kubelet stopped posting node
/// status.`); `None` for a Ready node, and for one that has not reported at all yet.
pub fn not_ready(node: &Node) -> Option<String> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let words: Vec<&str> = [ready.reason.as_deref(), ready.message.as_deref()]
        .into_iter()
        .flatten()
        .filter(|w| !w.is_empty())
        .collect();
    Some(match words.as_slice() {
        [] => format!("Ready is {}", ready.status),
        _ => words.join(": ").split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// What the node cache keeps of a node: its name and its Ready condition. Nodes carry images,
/// addresses and capacity in kilobytes each; a large cluster has thousands.
pub fn trim(node: &mut Node) {
    let name = node.name_any();
    let ready: Vec<NodeCondition> = node
        .status
        .take()
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .collect();
    *node = Node::default();
    node.metadata.name = Some(name);
    node.status = Some(NodeStatus {
        conditions: Some(ready),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(conditions: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"a": "b"}},
            "status": {"conditions": conditions, "images": [{"names": ["x"], "sizeBytes": 1}]}}))
        .expect("node")
    }

    #[test]
    fn a_node_is_lost_unless_ready_or_silent() {
        let unknown = node(
            json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status."}]),
        );
        assert_eq!(
            not_ready(&unknown).as_deref(),
            Some("NodeStatusUnknown: Kubelet stopped posting node status.")
        );
        assert_eq!(
            not_ready(&node(json!([{"type": "Ready", "status": "False"}]))).as_deref(),
            Some("Ready is False")
        );
        assert_eq!(
            not_ready(&node(json!([{"type": "Ready", "status": "True"}]))),
            None
        );
        assert_eq!(not_ready(&node(json!([]))), None, "not reported yet");
    }

    #[test]
    fn the_cache_keeps_the_name_and_readiness_only() {
        let mut n =
            node(json!([{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]));
        trim(&mut n);
        assert_eq!(n.metadata.name.as_deref(), Some("n1"));
        assert!(n.metadata.labels.is_none());
        let status = n.status.expect("status");
        assert!(status.images.is_none());
        assert_eq!(status.conditions.map(|c| c.len()), Some(1));
    }
}
