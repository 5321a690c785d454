/* pool_mode: the three pool modes as data (see pool_mode.h). */
#include "pool_mode.h"

static const struct pool_mode_ops modes[][2] = {
    /* [mode][reset_query_always] */
    [POOL_MODE_UNSET] = {{false, false, true}, {false, false, true}},
    [POOL_SESSION] = {{false, false, true}, {false, false, true}},
    [POOL_TRANSACTION] = {{true, false, false}, {true, false, true}},
    [POOL_STATEMENT] = {{true, true, false}, {true, true, true}},
};

const struct pool_mode_ops *pool_mode_ops(enum pool_mode m, bool reset_query_always)
{
    return &modes[m][reset_query_always ? 1 : 0];
}
