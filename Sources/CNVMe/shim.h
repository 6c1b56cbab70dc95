// libnvme (Debian: libnvme-dev, which needs libjson-c-dev and libssl-dev for pkg-config).
// Module map only: the safe Swift type over it is NVMeFabrics.LibNVMe.
#include <libnvme.h>
