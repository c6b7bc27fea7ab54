//! cserverctl commands.
