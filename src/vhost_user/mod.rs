//! The vhost-user-fs device.
