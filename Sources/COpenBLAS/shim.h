// Debian installs OpenBLAS's cblas.h under the multiarch include directory, which is on the default search path.
#include <cblas.h>
// Declared by OpenBLAS's cblas.h; repeated here so the shim documents what MambaKit calls.
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
