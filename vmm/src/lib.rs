//! pvkvm's host side: the VMM that runs Xen PV kernels on KVM.
