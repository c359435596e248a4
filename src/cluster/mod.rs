//! Cluster mode: several failoverd instances deciding as one through etcd.
pub mod etcd;
